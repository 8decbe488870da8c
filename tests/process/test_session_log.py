"""`session_log`: one line per session, written by the worker that served it, right for every way a session
ends, and never with a password in it."""

from __future__ import annotations

import json
import re
import ssl
import time
from pathlib import Path
from typing import Any

import trustme

from tests.oracle.backend import LoginBackend
from tests.process.conftest import ImapClient
from tests.support.authserver import AuthReply, AuthRequest, AuthServer
from tests.support.loopback import IPV4_LOOPBACK, free_port, wait_until
from tests.support.mailgate import mailgate_server

PASSWORD = "pa55-never-logged"

CONF = """
worker_processes 2;
events {{}}
mail {{
    auth_http {auth};
    session_log {prefix}/sessions.json json;
    server {{ listen 127.0.0.1:{plain}; protocol imap; }}
    server {{ listen 127.0.0.1:{short}; protocol imap; timeout 1s; }}
    server {{
        listen 127.0.0.1:{tls} ssl; protocol imap;
        ssl_certificate {certificate}; ssl_certificate_key {key};
    }}
    server {{
        listen 127.0.0.1:{starttls}; protocol imap;
        starttls only; ssl_certificate {certificate}; ssl_certificate_key {key};
    }}
    server {{ listen 127.0.0.1:{text}; protocol imap; session_log {prefix}/sessions.txt; }}
}}
"""


def _decide(request: AuthRequest, backend: int, refusing: int) -> AuthReply:
    login = request.header("Auth-User") or ""
    if login == "mallory":
        return AuthReply.error("Invalid login or password")
    if login == "bob":
        return AuthReply.ok(IPV4_LOOPBACK, refusing)
    return AuthReply.ok(IPV4_LOOPBACK, backend)


def _login(client: ImapClient, user: str) -> bytes:
    """The first line that answers a LOGIN (a tagged reply, or the untagged internal error)."""
    client.line()
    client.sock.sendall(f"a LOGIN {user} {PASSWORD}\r\n".encode())
    return client.line()


def test_each_way_a_session_ends_gets_its_own_correct_line(
    open_prefix: Path, imap_backend: LoginBackend, refusing_port: int
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com")
    certificate, key = open_prefix / "server.crt", open_prefix / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(certificate))
    leaf.private_key_pem.write_to_path(str(key))
    ports = {name: free_port() for name in ("plain", "short", "tls", "starttls", "text")}
    refusing = refusing_port
    with AuthServer() as auth:
        auth.set_default(lambda request: _decide(request, imap_backend.port, refusing))
        conf = CONF.format(auth=auth.url(), prefix=open_prefix, certificate=certificate, key=key, **ports)
        with mailgate_server(conf, open_prefix, master_process=True) as mailgate:
            ok = ImapClient(ports["plain"])
            assert _login(ok, "alice").startswith(b"a OK")
            assert ok.command(b"n NOOP\r\n") == [b"n NOOP\r\n"]  # relayed to the echo backend and back
            ok.close()

            rejected = ImapClient(ports["plain"])
            assert _login(rejected, "mallory").startswith(b"a NO")
            rejected.closed_by_server()

            unreachable = ImapClient(ports["plain"])
            assert _login(unreachable, "bob") == b"* BAD internal server error\r\n"
            unreachable.closed_by_server()

            idle = ImapClient(ports["short"])
            idle.line()
            assert idle.closed_by_server()

            quitting = ImapClient(ports["plain"])
            quitting.line()
            quitting.command(b"q LOGOUT\r\n")
            quitting.closed_by_server()

            context = ssl.create_default_context()
            ca.configure_trust(context)
            secure = ImapClient(ports["tls"])
            secure.sock = context.wrap_socket(secure.sock, server_hostname="mail.example.com")
            assert _login(secure, "carol").startswith(b"a OK")
            secure.close()

            upgraded = ImapClient(ports["starttls"])
            upgraded.line()
            assert upgraded.command(b"s STARTTLS\r\n")[-1].startswith(b"s OK")
            upgraded.sock = context.wrap_socket(upgraded.sock, server_hostname="mail.example.com")
            assert upgraded.command(f"a LOGIN dave {PASSWORD}\r\n".encode())[-1].startswith(b"a OK")
            upgraded.close()

            texted = ImapClient(ports["text"])
            texted.line()
            texted.command(b"q LOGOUT\r\n")
            texted.closed_by_server()

            json_log, text_log = open_prefix / "sessions.json", open_prefix / "sessions.txt"
            assert wait_until(lambda: len(json_log.read_text().splitlines()) == 7, 20)
            assert wait_until(lambda: text_log.exists() and text_log.read_text().count("\n") == 1, 20)
            time.sleep(0.2)  # nothing more may come
            entries: list[dict[str, Any]] = [json.loads(line) for line in json_log.read_text().splitlines()]
            text_line = text_log.read_text()
            error_log = mailgate.error_log_text()

    by_login = {entry["login"]: entry for entry in entries if entry["login"]}
    no_login = [entry for entry in entries if not entry["login"]]
    common = {
        "protocol": "imap",
        "tls": "none",
        "tls_protocol": None,
        "tls_cipher": None,
        "tls_resumed": None,
    }
    success = by_login["alice"]
    assert {key: success[key] for key in common} == common
    assert (success["auth"], success["upstream"], success["end"]) == (
        "ok",
        f"127.0.0.1:{imap_backend.port}",
        "client closed",
    )
    assert success["bytes_from_client"] == len(b"n NOOP\r\n")
    assert success["bytes_to_client"] >= len(b"a OK backend logged in\r\nn NOOP\r\n")
    assert success["server"] == f"127.0.0.1:{ports['plain']}"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", success["client"])
    assert (by_login["mallory"]["auth"], by_login["mallory"]["upstream"], by_login["mallory"]["end"]) == (
        "rejected",
        None,
        "auth rejected",
    )
    assert (by_login["bob"]["auth"], by_login["bob"]["upstream"], by_login["bob"]["end"]) == (
        "ok",
        f"127.0.0.1:{refusing}",
        "backend connect failed",
    )
    assert sorted((entry["server"], entry["auth"], entry["end"]) for entry in no_login) == sorted(
        [
            (f"127.0.0.1:{ports['short']}", "none", "timed out"),
            (f"127.0.0.1:{ports['plain']}", "none", "client quit"),
        ]
    )
    secure_entry = by_login["carol"]
    assert (secure_entry["tls"], secure_entry["tls_protocol"], secure_entry["tls_resumed"]) == (
        "implicit",
        "TLSv1.3",
        False,
    )
    assert secure_entry["tls_cipher"].startswith("TLS_")
    upgraded_entry = by_login["dave"]
    assert (upgraded_entry["tls"], upgraded_entry["auth"], upgraded_entry["end"]) == (
        "starttls",
        "ok",
        "client closed",
    )
    assert upgraded_entry["tls_protocol"] == "TLSv1.3"
    assert all(entry["duration"] >= 0 for entry in entries)
    assert len({entry["connection"] for entry in entries}) == len(entries)
    assert re.fullmatch(
        r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \*\d+ client=127\.0\.0\.1:\d+ "
        rf"server=127\.0\.0\.1:{ports['text']} "
        r"protocol=imap tls=none tls_protocol=- tls_cipher=- tls_resumed=- login=- auth=none upstream=- "
        r'bytes_from_client=0 bytes_to_client=0 duration=\d+\.\d{3} end="client quit"' + "\n",
        text_line,
    )
    for text in (json_log.read_text(), text_line, error_log):
        assert PASSWORD not in text
