"""How a TLS connection ends, on the wire, as Debian's nginx 1.22 ends it (ngx_ssl_shutdown):

* the server's close_notify, then at most 3 s waiting for the client's before the TCP close;
* no close_notify to a client that timed out (a quiet shutdown).

Clients run on memory BIOs over a plain socket, so every byte the server sends after a point is seen.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.e2e_tls.support import (
    IMAP_GREETING,
    KINDS,
    SERVER_NAME,
    Proxy,
    client_context,
    mail_config,
    open_at_client_hello,
    running_both,
)
from tests.support.authserver import AuthReply
from tests.support.fake_backend import Echo, Expect, FakeBackend, Send, Step
from tests.support.loopback import IPV4_LOOPBACK
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    server { listen 127.0.0.1:$imap_ssl ssl; listen 127.0.0.1:$imap_on; protocol imap; starttls on; }
    server {
        listen 127.0.0.1:$quick_ssl ssl; listen 127.0.0.1:$quick_on; protocol imap; starttls on;
        timeout 2s;
    }
"""
)
# Far above nginx's 3 s wait for the client's close_notify, far below the event loop's own default (30 s).
CLOSE_TIMEOUT = 12.0


@pytest.fixture(scope="module")
def proxies(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    with running_both(TEMPLATE, pki.directory, tmp_path_factory.mktemp("tls-close")) as both:
        yield both


class Client:
    """A TLS client on memory BIOs over `sock`: what it sends and reads is under the test's control."""

    def __init__(self, sock: socket.socket, version: ssl.TLSVersion) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = client_context(version=version)
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=SERVER_NAME)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.receive()
        self.flush()

    def flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def receive(self) -> bool:
        chunk = self.sock.recv(65536)
        self.incoming.write(chunk)
        return bool(chunk)

    def read_until(self, end: bytes) -> bytes:
        data = b""
        while not data.endswith(end):
            try:
                data += self.tls.read()
            except ssl.SSLWantReadError:
                assert self.receive(), data
        return data

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def read_to_the_end(self) -> tuple[bytes, bool]:
        """Application data until the TCP close, and whether a close_notify came before it."""
        data = b""
        while True:
            try:
                chunk = self.tls.read()
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLWantReadError:
                if not self.receive():
                    return data, False
                continue
            if not chunk:  # the close_notify
                return data + self.rest(), True
            data += chunk

    def rest(self) -> bytes:
        """Raw bytes after the close_notify, until the TCP close."""
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := self.sock.recv(65536):
                received += chunk
        return received


def connect(proxy: Proxy, server: str, mode: str, version: ssl.TLSVersion) -> Client:
    sock = open_at_client_hello(proxy, f"{server}_{mode}", mode, CLOSE_TIMEOUT)
    client = Client(sock, version)
    if mode == "ssl":
        assert client.read_until(b"\r\n") == IMAP_GREETING
    else:  # read past what the server sends after the handshake (TLS 1.3 session tickets)
        client.send(b"n NOOP\r\n")
        assert client.read_until(b"\r\n") == b"n OK completed\r\n"
    return client


VERSIONS = pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
MODES = pytest.mark.parametrize("mode", ["ssl", "on"], ids=["implicit", "starttls"])


@VERSIONS
@MODES
def test_server_closes_with_close_notify_and_waits_for_the_clients_only_briefly(
    proxies: dict[str, Proxy], mode: str, version: ssl.TLSVersion
) -> None:
    """After LOGOUT the client neither answers the close_notify nor closes: the server closes anyway, well
    before the socket's timeout (a recv() timing out here fails the test)."""
    ends = {}
    for kind in KINDS:
        client = connect(proxies[kind], "imap", mode, version)
        with client.sock:
            client.send(b"a LOGOUT\r\n")
            ends[kind] = client.read_to_the_end()
    assert ends["mailgate"] == ends["nginx"]
    assert ends["mailgate"] == (b"* BYE\r\na OK completed\r\n", True)


@MODES
def test_client_that_timed_out_gets_no_close_notify(proxies: dict[str, Proxy], mode: str) -> None:
    ends = {}
    for kind in KINDS:
        client = connect(proxies[kind], "quick", mode, ssl.TLSVersion.TLSv1_3)
        with client.sock:
            ends[kind] = client.read_to_the_end()
    assert ends["mailgate"] == ends["nginx"] == (b"", False)


@MODES
def test_a_clients_close_notify_is_not_answered(proxies: dict[str, Proxy], mode: str) -> None:
    """nginx closes after the client's close_notify without sending its own (nor any other byte)."""
    after = {}
    for kind in KINDS:
        client = connect(proxies[kind], "imap", mode, ssl.TLSVersion.TLSv1_3)
        with client.sock:
            with contextlib.suppress(ssl.SSLWantReadError):
                client.tls.unwrap()  # queues our close_notify
            client.flush()
            after[kind] = client.rest()
    assert after["mailgate"] == after["nginx"] == b""


IMAP_BACKEND: list[Step] = [
    Send(b"* OK backend ready\r\n"),
    Expect(b"}\r\n"),
    Send(b"+ OK\r\n"),
    Expect(b"}\r\n"),
    Send(b"+ OK\r\n"),
    Expect(b"\r\n"),
    Send(b"a OK logged in\r\n"),
    Echo(),
]
RELAY_TEMPLATE = mail_config(
    """
    server { listen 127.0.0.1:$relay_ssl ssl; protocol imap; proxy_timeout 2s; }
"""
)


def test_a_relay_that_reaches_proxy_timeout_ends_without_close_notify(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ends = {}
    with FakeBackend(IMAP_BACKEND) as backend:
        reply = AuthReply.ok(IPV4_LOOPBACK, backend.port)
        directory = tmp_path_factory.mktemp("relay")
        with running_both(RELAY_TEMPLATE, pki.directory, directory, reply=reply) as both:
            for kind in KINDS:
                sock = socket.create_connection((IPV4_LOOPBACK, both[kind].port("relay_ssl")), timeout=30)
                client = Client(sock, ssl.TLSVersion.TLSv1_3)
                with client.sock:
                    assert client.read_until(b"\r\n") == IMAP_GREETING
                    client.send(b"a LOGIN alice secret\r\n")
                    assert client.read_until(b"\r\n") == b"a OK logged in\r\n"
                    ends[kind] = client.read_to_the_end()  # nothing more is sent: proxy_timeout ends it
    assert ends["mailgate"] == ends["nginx"] == (b"", False)
