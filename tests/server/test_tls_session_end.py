"""How TLS client sessions end: a client's EOF closes the session quietly, with or without close_notify."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

import trustme

from tests.support.authserver import AuthServer
from tests.support.loopback import free_port
from tests.support.mailgate import mailgate_server


def test_a_tls_client_closing_leaves_nothing_but_nginxs_lines_in_the_logs(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(certificate)
    leaf.private_key_pem.write_to_path(key)
    port = free_port()
    with AuthServer() as auth:
        conf = f"""events {{}}
mail {{
    auth_http {auth.address}/auth;
    ssl_certificate {certificate};
    ssl_certificate_key {key};
    server {{ listen 127.0.0.1:{port} ssl; protocol imap; }}
}}
"""
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with mailgate_server(conf, tmp_path / "mailgate", log_level="debug") as mailgate:
            for clean in (True, False):
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                tls = context.wrap_socket(raw, server_hostname="localhost")
                assert tls.recv(100) == b"* OK IMAP4 ready\r\n"
                if clean:
                    # close_notify, then EOF; like nginx, mailgate closes without answering it.
                    with contextlib.suppress(ssl.SSLError, OSError):
                        tls.unwrap()
                    raw.close()
                else:
                    tls.close()  # EOF without close_notify, as many clients end
            check = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert context.wrap_socket(check, server_hostname="localhost").recv(100).startswith(b"* OK")
            check.close()
        logged = mailgate.error_log_text() + (mailgate.prefix / "stderr.log").read_text()
    assert "eof_received" not in logged
    assert "Traceback" not in logged
    assert "[alert]" not in logged and "[crit]" not in logged
