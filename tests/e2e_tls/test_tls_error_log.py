"""TLS failures in the error_log, line for line as Debian's nginx 1.22 writes them: OpenSSL's error queue in
nginx's words (`SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number)`), nginx's
level (info for what it counts as the client's doing, crit for the rest) and its action (`SSL handshaking`,
`in starttls state`, `in auth state`, `proxying and reading from client`).

Every case runs on both servers. The lines a case leaves are those logged before a marker (a refused login
on a plain server) that the test sends once the case is over; timestamps, process and connection numbers are
dropped and ports named.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e_tls.support import (
    IMAP_GREETING,
    KINDS,
    READ_TIMEOUT,
    SERVER_NAME,
    Proxy,
    client_context,
    mail_config,
    open_at_client_hello,
    read_until_closed,
    running,
)
from tests.support.authserver import AuthReply, AuthRequest
from tests.support.fake_backend import IMAP_LOGIN_THEN_ECHO, FakeBackend
from tests.support.loopback import IPV4_LOOPBACK, wait_until
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    server { listen 127.0.0.1:$imap_ssl ssl; listen 127.0.0.1:$imap_on; protocol imap; starttls on; }
    server {
        listen 127.0.0.1:$quick_ssl ssl; listen 127.0.0.1:$quick_on; protocol imap; starttls on;
        timeout 2s;
    }
    server { listen 127.0.0.1:$marker; protocol imap; }
"""
)
MARKER_LOGIN = b"m LOGIN marker secret\r\n"
_LOG_LINE = re.compile(
    r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?P<level>\w+)\] \d+#\d+: (?:\*\d+ )?(?P<text>.*)$"
)


@dataclass(frozen=True)
class Servers:
    proxies: dict[str, Proxy]
    backend_port: int


@pytest.fixture(scope="module")
def servers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    directory = tmp_path_factory.mktemp("tls-error-log")
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(FakeBackend(IMAP_LOGIN_THEN_ECHO))

        def reply(request: AuthRequest) -> AuthReply:
            if request.header("Auth-User") == "alice":
                return AuthReply.ok(IPV4_LOOPBACK, backend.port)
            return AuthReply.error("Invalid login or password")

        proxies = {
            kind: stack.enter_context(running(kind, TEMPLATE, pki.directory, directory / kind, reply=reply))
            for kind in KINDS
        }
        yield Servers(proxies, backend.port)


# --- reading the log --------------------------------------------------------------------------------------


def log_lines(proxy: Proxy, backend_port: int) -> list[str]:
    """The session lines (no `connected to`, no notices), as `[level] text` with ports named."""
    names = {str(port): name for name, port in proxy.ports.items()}
    names[str(backend_port)] = "backend"
    lines = []
    for line in proxy.log_text().splitlines():
        match = _LOG_LINE.match(line)
        if match is None or match["level"] == "notice" or " connected to " in match["text"]:
            continue
        text = re.sub(
            r"127\.0\.0\.1:(\d+)", lambda port: "127.0.0.1:" + names.get(port[1], port[1]), match["text"]
        )
        lines.append(f"[{match['level']}] {text}")
    return lines


def send_marker(proxy: Proxy) -> None:
    with socket.create_connection((IPV4_LOOPBACK, proxy.port("marker")), timeout=READ_TIMEOUT) as sock:
        received = b""
        while not received.endswith(b"\r\n") or b"m " not in received:
            if received.endswith(IMAP_GREETING):
                sock.sendall(MARKER_LOGIN)
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk


def lines_of_case(proxy: Proxy, backend_port: int, case: Callable[[Proxy], None], expected: int) -> list[str]:
    """The lines `case` leaves (`expected` of them): everything logged after it began and before the
    marker's line."""
    before = len(log_lines(proxy, backend_port))
    case(proxy)
    # Wait for the lines the case should leave (a reset is seen by the server only later), then mark.
    wait_until(lambda: len(log_lines(proxy, backend_port)) - before >= expected, READ_TIMEOUT)
    send_marker(proxy)

    def marked() -> bool:
        return any('login: "marker"' in line for line in log_lines(proxy, backend_port)[before:])

    assert wait_until(marked, READ_TIMEOUT), proxy.log_text()
    lines = log_lines(proxy, backend_port)[before:]
    return lines[: next(index for index, line in enumerate(lines) if 'login: "marker"' in line)]


def both(servers: Servers, case: Callable[[Proxy], None], expected: int) -> list[str]:
    """mailgate's lines for `case` (which should leave `expected` lines), after checking that nginx's are
    the same."""
    seen = {
        kind: lines_of_case(servers.proxies[kind], servers.backend_port, case, expected) for kind in KINDS
    }
    assert seen["mailgate"] == seen["nginx"]
    return seen["mailgate"]


# --- clients ----------------------------------------------------------------------------------------------


def client_hello(context: ssl.SSLContext) -> bytes:
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=SERVER_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


Case = Callable[[socket.socket], None]


def sends(data: bytes) -> Case:
    def case(sock: socket.socket) -> None:
        sock.sendall(data)
        read_until_closed(sock)

    return case


def hello_then_eof(sock: socket.socket) -> None:
    hello = client_hello(client_context())
    sock.sendall(hello[: len(hello) // 2])
    sock.shutdown(socket.SHUT_WR)
    read_until_closed(sock)


def hello_then_reset(sock: socket.socket) -> None:
    hello = client_hello(client_context())
    sock.sendall(hello[: len(hello) // 2])
    reset(sock)


def handshake_with(context: ssl.SSLContext) -> Case:
    def case(sock: socket.socket) -> None:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(sock, server_hostname=SERVER_NAME)

    return case


def tls11_only() -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context = client_context(version=ssl.TLSVersion.TLSv1_1)
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    return context


def dhe_only() -> ssl.SSLContext:
    context = client_context(version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("DHE-RSA-AES128-SHA")  # no ssl_dhparam: the server has no DHE suite
    return context


def verifying_with(ca_file: object) -> ssl.SSLContext:
    context = client_context()
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(ca_file))
    return context


def silence(sock: socket.socket) -> None:
    assert read_until_closed(sock) == b""


def failed(reason: str) -> str:
    return f"[info] SSL_do_handshake() failed (SSL: error:{reason})"


HANDSHAKES: dict[str, tuple[Callable[[Pki], Case], list[str]]] = {
    "http request": (
        lambda _pki: sends(b"GET / HTTP/1.1\r\nHost: mail.test\r\n\r\n"),
        [failed("0A00009C:SSL routines::http request")],
    ),
    "imap command": (
        lambda _pki: sends(b"a LOGIN alice secret\r\n"),
        [failed("0A00010B:SSL routines::wrong version number")],
    ),
    "bad record version": (
        lambda _pki: sends(b"\x16\x09\x09\x00\x05hello"),
        [failed("0A00010B:SSL routines::wrong version number")],
    ),
    "broken client hello": (
        lambda _pki: sends(b"\x16\x03\x01\x00\x09\x01\x00\x00\x05\x03\x03abc"),
        [failed("0A00009F:SSL routines::length mismatch")],
    ),
    "binary noise": (
        lambda _pki: sends(bytes(range(256)) * 4),
        [failed("0A00010B:SSL routines::wrong version number")],
    ),
    "eof in the client hello": (
        lambda _pki: hello_then_eof,
        ["[info] peer closed connection in SSL handshake"],
    ),
    "reset in the client hello": (
        lambda _pki: hello_then_reset,
        ["[info] peer closed connection in SSL handshake (104: Connection reset by peer)"],
    ),
    "alpn without imap": (
        lambda _pki: handshake_with(client_context(alpn=["h2"])),
        [failed("0A0000EB:SSL routines::no application protocol")],
    ),
    "tls 1.1 only": (
        lambda _pki: handshake_with(tls11_only()),
        [failed("0A000102:SSL routines::unsupported protocol")],
    ),
    "no shared cipher": (
        lambda _pki: handshake_with(dhe_only()),
        [failed("0A0000C1:SSL routines::no shared cipher")],
    ),
    "client refuses the certificate": (
        lambda pki: handshake_with(verifying_with(pki.other_ca_file)),
        [failed("0A000418:SSL routines::tlsv1 alert unknown ca:SSL alert number 48")],
    ),
}

CONTEXT = {
    "ssl": " while SSL handshaking, client: 127.0.0.1, server: 127.0.0.1:{server}_ssl",
    "on": " while in starttls state, client: 127.0.0.1 using starttls, server: 127.0.0.1:{server}_on",
}


@pytest.mark.parametrize("mode", ["ssl", "on"], ids=["implicit", "starttls"])
@pytest.mark.parametrize("name", list(HANDSHAKES))
def test_failed_handshake_is_logged_as_nginx_logs_it(
    servers: Servers, pki: Pki, name: str, mode: str
) -> None:
    make_case, expected = HANDSHAKES[name]

    def case(proxy: Proxy) -> None:
        with contextlib.closing(open_at_client_hello(proxy, f"imap_{mode}", mode)) as sock:
            make_case(pki)(sock)

    context = CONTEXT[mode].format(server="imap")
    assert both(servers, case, len(expected)) == [line + context for line in expected]


@pytest.mark.parametrize("mode", ["ssl", "on"], ids=["implicit", "starttls"])
def test_handshake_timeout_closes_without_a_line(servers: Servers, mode: str) -> None:
    def case(proxy: Proxy) -> None:
        with contextlib.closing(open_at_client_hello(proxy, f"quick_{mode}", mode)) as sock:
            silence(sock)

    assert both(servers, case, 0) == []


# --- after the handshake ----------------------------------------------------------------------------------


def tls_session(proxy: Proxy, mode: str) -> tuple[ssl.SSLSocket, socket.socket]:
    """A TLS 1.2 session in the auth state, and a second handle on its socket to write raw records."""
    sock = open_at_client_hello(proxy, f"imap_{mode}", mode)
    tls = client_context(version=ssl.TLSVersion.TLSv1_2).wrap_socket(sock, server_hostname=SERVER_NAME)
    if mode == "ssl":
        assert tls.recv(1024) == IMAP_GREETING
    tls.sendall(b"n NOOP\r\n")
    assert tls.recv(1024) == b"n OK completed\r\n"
    raw = socket.socket(fileno=os.dup(tls.fileno()))
    raw.settimeout(READ_TIMEOUT)
    return tls, raw


BOGUS_RECORD = b"\x17\x03\x03\x00\x20" + b"x" * 32  # application data that does not decrypt
AUTH_CONTEXT = {
    "ssl": " while in auth state, client: 127.0.0.1, server: 127.0.0.1:imap_ssl",
    "on": " while in auth state, client: 127.0.0.1 using starttls, server: 127.0.0.1:imap_on",
}


@pytest.mark.parametrize("mode", ["ssl", "on"], ids=["implicit", "starttls"])
def test_record_that_does_not_decrypt_is_crit_with_every_queued_error_and_gets_its_alert(
    servers: Servers, mode: str
) -> None:
    """nginx 1.22 classes the failure by the first queued error, the provider's, which its list lacks."""
    answers = []

    def case(proxy: Proxy) -> None:
        tls, raw = tls_session(proxy, mode)
        with tls, raw:
            raw.sendall(BOGUS_RECORD)
            answers.append(read_until_closed(raw))

    lines = both(servers, case, 1)
    assert lines == [
        "[crit] SSL_read() failed (SSL: error:1C800066:Provider routines::cipher operation failed"
        " error:0A000119:SSL routines::decryption failed or bad record mac)" + AUTH_CONTEXT[mode]
    ]
    # Each server answered with one encrypted fatal alert (bad_record_mac) before closing.
    assert [answer[:3] for answer in answers] == [b"\x15\x03\x03"] * 2
    assert len(answers[0]) == len(answers[1]) == 5 + int.from_bytes(answers[0][3:5], "big")


@pytest.mark.parametrize("mode", ["ssl", "on"], ids=["implicit", "starttls"])
@pytest.mark.parametrize("ending", ["reset", "close without close_notify"])
def test_tls_client_leaving_in_the_auth_state_leaves_no_line(
    servers: Servers, mode: str, ending: str
) -> None:
    """nginx's SSL_read() takes the end of the connection, reset or not, for the client's clean close."""

    def case(proxy: Proxy) -> None:
        tls, raw = tls_session(proxy, mode)
        raw.close()
        if ending == "reset":
            reset(tls)
        else:
            tls.close()

    assert both(servers, case, 0) == []


# --- while relaying ---------------------------------------------------------------------------------------

RELAY_CONTEXT = ', client: 127.0.0.1, server: 127.0.0.1:imap_ssl, login: "alice", upstream: 127.0.0.1:backend'


def relayed_session(proxy: Proxy) -> tuple[ssl.SSLSocket, socket.socket]:
    tls, raw = tls_session(proxy, "ssl")
    tls.sendall(b"a1 LOGIN alice secret\r\n")
    assert tls.recv(1024) == b"a1 OK backend logged in\r\n"
    return tls, raw


def test_record_that_does_not_decrypt_while_relaying(servers: Servers) -> None:
    def case(proxy: Proxy) -> None:
        tls, raw = relayed_session(proxy)
        with tls, raw:
            raw.sendall(BOGUS_RECORD)
            read_until_closed(raw)

    assert both(servers, case, 3) == [
        "[info] client logged in" + RELAY_CONTEXT,
        "[crit] SSL_read() failed (SSL: error:1C800066:Provider routines::cipher operation failed"
        " error:0A000119:SSL routines::decryption failed or bad record mac) while proxying and reading from"
        " client" + RELAY_CONTEXT,
        "[info] proxied session done" + RELAY_CONTEXT,
    ]


def test_tls_client_reset_while_relaying_is_a_finished_session(servers: Servers) -> None:
    def case(proxy: Proxy) -> None:
        tls, raw = relayed_session(proxy)
        raw.close()
        reset(tls)

    assert both(servers, case, 2) == [
        "[info] client logged in" + RELAY_CONTEXT,
        "[info] proxied session done" + RELAY_CONTEXT,
    ]
