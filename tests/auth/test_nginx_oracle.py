"""Our auth request against the one Debian's nginx (1.22.1, mail module) really sends, byte for byte.

nginx talks to a capturing auth server here; each capture must equal `build_auth_request` for the same
session facts. It also proves the SMTP parser never lets CR or LF into the raw Auth-SMTP-* values.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.auth.request import AuthAttempt, build_auth_request
from mailgate.config.model import Protocol
from mailgate.protocol.credentials import AuthMethod, Credentials
from tests.auth.servers import auth_url, server_config

NGINX = "/usr/sbin/nginx"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(
        not (os.path.exists(NGINX) and os.path.exists(MAIL_MODULE)), reason="nginx mail module not installed"
    ),
]
SERVER_AUTH_METHODS = {
    Protocol.IMAP: "imap_auth plain cram-md5",
    Protocol.POP3: "pop3_auth plain apop",
    Protocol.SMTP: "smtp_auth login plain none",
}
REJECTION = b"HTTP/1.0 200 OK\r\nAuth-Status: Go away\r\n\r\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CapturingAuthServer:
    """Records each request head and answers with a plain rejection (so nginx needs no backend)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.arrived = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                connection.sendall(REJECTION)
            with self.arrived:
                self.requests.append(head)
                self.arrived.notify_all()

    def next_request(self, count: int) -> bytes:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=10), "no auth request"
            return self.requests[count - 1]


class Nginx:
    def __init__(self, directory: Path, auth: CapturingAuthServer) -> None:
        self.ports = {protocol: free_port() for protocol in Protocol}
        config = directory / "nginx.conf"
        servers = "".join(
            f"  server {{ listen 127.0.0.1:{self.ports[protocol]}; protocol {protocol}; {methods}; }}\n"
            for protocol, methods in SERVER_AUTH_METHODS.items()
        )
        config.write_text(
            f"load_module {MAIL_MODULE};\n"
            f"daemon off; master_process off; pid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "mail {\n"
            "  server_name mail.example.com;\n"
            f"  auth_http 127.0.0.1:{auth.port}/auth;\n"
            '  auth_http_header X-Auth-Key "s3cret";\n'
            f"{servers}}}\n"
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert self.process.poll() is None, (
                        self.process.stderr.read() if self.process.stderr else ""
                    )
                    assert time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, CapturingAuthServer]]:
    auth = CapturingAuthServer()
    running = Nginx(tmp_path_factory.mktemp("nginx"), auth)
    try:
        yield running, auth
    finally:
        running.stop()
        auth.listener.close()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def expected(protocol: Protocol, credentials: Credentials, port: int) -> bytes:
    server = server_config(
        protocol,
        url=auth_url(port=port, uri="/auth", host_header="127.0.0.1"),
        headers=(("X-Auth-Key", "s3cret"),),
    )
    return build_auth_request(server, AuthAttempt(credentials, 1, "127.0.0.1"))


def exchange(
    nginx: tuple[Nginx, CapturingAuthServer], protocol: Protocol, dialogue: list[bytes]
) -> tuple[Client, bytes]:
    """Connect, send each line after reading one reply line, and return the captured auth request."""
    server, auth = nginx
    count = len(auth.requests) + 1
    client = Client(server.ports[protocol])
    client.line()
    for line in dialogue:
        client.send(line)
        if line is not dialogue[-1]:
            client.line()
    return client, auth.next_request(count)


def test_imap_login_with_escapes(nginx: tuple[Nginx, CapturingAuthServer]) -> None:
    client, request = exchange(nginx, Protocol.IMAP, [b'a1 LOGIN "us%er" "pa ss\\\\"\r\n'])
    assert client.line() == b"a1 NO Go away"
    client.close()
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"us%er", b"pa ss\\")
    assert request == expected(Protocol.IMAP, credentials, nginx[1].port)


def test_imap_cram_md5_sends_the_salt(nginx: tuple[Nginx, CapturingAuthServer]) -> None:
    server, auth = nginx
    count = len(auth.requests) + 1
    client = Client(server.ports[Protocol.IMAP])
    client.line()
    client.send(b"a1 AUTHENTICATE CRAM-MD5\r\n")
    salt = base64.b64decode(client.line()[2:])
    client.send(base64.b64encode(b"bob " + b"a" * 32) + b"\r\n")
    request = auth.next_request(count)
    client.close()
    credentials = Credentials(Protocol.IMAP, AuthMethod.CRAM_MD5, b"bob", b"a" * 32, salt=salt)
    assert request == expected(Protocol.IMAP, credentials, auth.port)


def test_pop3_apop_and_user_pass(nginx: tuple[Nginx, CapturingAuthServer]) -> None:
    server, auth = nginx
    count = len(auth.requests) + 1
    client = Client(server.ports[Protocol.POP3])
    salt = client.line().rpartition(b" ")[2]
    client.send(b"APOP bob 0123456789abcdef0123456789abcdef\r\n")
    credentials = Credentials(
        Protocol.POP3, AuthMethod.APOP, b"bob", b"0123456789abcdef0123456789abcdef", salt=salt
    )
    assert auth.next_request(count) == expected(Protocol.POP3, credentials, auth.port)
    client.close()
    client, request = exchange(nginx, Protocol.POP3, [b"USER bob\r\n", b"PASS p\x01%\x7f\xc3\xa9\r\n"])
    client.close()
    credentials = Credentials(Protocol.POP3, AuthMethod.PLAIN, b"bob", b"p\x01%\x7f\xc3\xa9")
    assert request == expected(Protocol.POP3, credentials, auth.port)


def test_smtp_auth_login(nginx: tuple[Nginx, CapturingAuthServer]) -> None:
    dialogue = [
        b"EHLO client.example.org\r\n",
        b"AUTH LOGIN\r\n",
        base64.b64encode(b"user") + b"\r\n",
        base64.b64encode(b"pass") + b"\r\n",
    ]
    client, request = exchange(nginx, Protocol.SMTP, dialogue)
    client.close()
    credentials = Credentials(
        Protocol.SMTP, AuthMethod.PLAIN, b"user", b"pass", smtp_helo=b"client.example.org"
    )
    assert request == expected(Protocol.SMTP, credentials, nginx[1].port)


def test_smtp_relay_sends_raw_helo_from_and_to(nginx: tuple[Nginx, CapturingAuthServer]) -> None:
    dialogue = [
        b"HELO client.example.org\r\n",
        b"MAIL FROM:<a@example.org> SIZE=100\r\n",
        b"RCPT  TO:<b@example.net>\r\n",
    ]
    client, request = exchange(nginx, Protocol.SMTP, dialogue)
    client.close()
    credentials = Credentials(
        Protocol.SMTP,
        AuthMethod.NONE,
        smtp_helo=b"client.example.org",
        smtp_from=b"MAIL FROM:<a@example.org> SIZE=100",
        smtp_to=b"RCPT  TO:<b@example.net>",
    )
    assert request == expected(Protocol.SMTP, credentials, nginx[1].port)


def test_smtp_parser_never_lets_line_breaks_into_the_raw_headers(
    nginx: tuple[Nginx, CapturingAuthServer],
) -> None:
    server, auth = nginx
    count = len(auth.requests) + 1
    client = Client(server.ports[Protocol.SMTP])
    client.line()
    for attempt in (b"HELO a\rAuth-Server: 10.0.0.1\r\n", b"MAIL FROM:<a@b>\rAuth-Server: 10.0.0.1\r\n"):
        client.send(attempt)
        assert client.line() == b"500 5.5.1 Invalid command"
    client.send(b"HELO h\r\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nAuth-Server: 10.0.0.1\r\n")
    request = auth.next_request(count)
    head = request[: -len(b"\r\n\r\n")]
    assert all(
        line.count(b": ") >= 1 and b"\r" not in line and b"\n" not in line for line in head.split(b"\r\n")[1:]
    )
    assert b"Auth-SMTP-From: MAIL FROM:<a@b>\r\nAuth-SMTP-To: RCPT TO:<c@d>\r\n" in request
    assert b"\r\nAuth-Server" not in request
    client.close()
