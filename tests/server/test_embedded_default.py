"""mailgate with no configuration file: the embedded default prepares its prefix and serves at once."""

from __future__ import annotations

import imaplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.embedded import CERTIFICATE_NAME, KEY_NAME
from tests.support.authserver import AuthReply, AuthServer
from tests.support.mailgate import MAILGATE

EMBEDDED_PORTS = (1143, 1993, 1110, 1995, 1587, 1465)
AUTH_PORT = 9143


def _ports_free(ports: tuple[int, ...]) -> bool:
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_first_test_run_generates_a_private_key_and_certificate_once(tmp_path: Path) -> None:
    test = [str(MAILGATE), "-p", str(tmp_path), "-t"]
    first = subprocess.run(test, check=False, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines()[-1].endswith("test is successful")
    key, certificate = tmp_path / "conf" / KEY_NAME, tmp_path / "conf" / CERTIFICATE_NAME
    assert key.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"
    issued = certificate.read_bytes()
    again = subprocess.run(test, check=False, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert certificate.read_bytes() == issued, "an existing certificate is never replaced"


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[Path, AuthServer]]:
    """mailgate on its embedded default, with the recording auth server where mailgate-auth would be."""
    if not _ports_free((*EMBEDDED_PORTS, AUTH_PORT)):
        pytest.skip("the embedded configuration's fixed loopback ports are taken on this machine")
    with AuthServer(port=AUTH_PORT) as auth:
        process = subprocess.Popen(
            [str(MAILGATE), "-p", str(tmp_path), "-g", "daemon off; master_process off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pid_file = tmp_path / "logs" / "mailgate.pid"
        deadline = time.monotonic() + 20
        try:
            while not pid_file.exists():
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "no pid file within 20 s"
                time.sleep(0.02)
            yield tmp_path, auth
        finally:
            process.terminate()
            process.wait(10)
        assert not pid_file.exists(), "the pid file is removed on exit"


def _client_context(prefix: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=prefix / "conf" / CERTIFICATE_NAME)
    context.check_hostname = True
    return context


def test_embedded_default_serves_imaps_and_starttls_with_its_generated_certificate(
    embedded_server: tuple[Path, AuthServer],
) -> None:
    prefix, auth = embedded_server
    auth.set_default(AuthReply.error("demo refusal"))
    # A rejection without Auth-Wait ends the session (as nginx), so no LOGOUT follows.
    implicit = imaplib.IMAP4_SSL("localhost", 1993, ssl_context=_client_context(prefix))
    with pytest.raises(imaplib.IMAP4.error, match="demo refusal"):
        implicit.login("demo", "secret")
    implicit.shutdown()
    plain = imaplib.IMAP4("127.0.0.1", 1143)
    assert "STARTTLS" in plain.capabilities
    plain.starttls(_client_context(prefix))
    with pytest.raises(imaplib.IMAP4.error, match="demo refusal"):
        plain.login("demo", "secret")
    plain.shutdown()
    requests = auth.wait_for_requests(2)
    assert [request.header("Auth-SSL") for request in requests] == ["on", "on"]
    assert all(request.header("Auth-Protocol") == "imap" for request in requests)
