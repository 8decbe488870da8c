"""The auth request mailgate sends equals the one nginx sends for the same session, header by header.

Both proxies run one configuration and ask one recording auth server, which refuses every login (so no
backend is needed). Each session is played against nginx, then against mailgate, and the requests it caused
are compared line by line and then byte for byte. Only nginx's salt (`Auth-Salt`, pid and time) is
normalised; the clients answer APOP and CRAM-MD5 challenges with fixed digests so `Auth-Pass` is the same.
"""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.harness import KINDS, LineClient, ProxyKind, RunningProxy, normalise, running_proxy
from tests.support.authserver import AuthReply, AuthRequest, AuthServer

pytestmark = pytest.mark.nginx

REFUSAL = "Go away"
DIGEST = b"0123456789abcdef0123456789abcdef"

TEMPLATE = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;
    auth_http_header X-Auth-Key "s3cret key";
    auth_http_header X-Tenant blue;

    server {
        listen 127.0.0.1:$port_imap;
        protocol imap;
        imap_auth plain login cram-md5;
    }

    server {
        listen 127.0.0.1:$port_pop3;
        protocol pop3;
        pop3_auth plain apop cram-md5;
    }

    server {
        listen 127.0.0.1:$port_smtp;
        protocol smtp;
        smtp_auth login plain cram-md5 none;
    }

    server {
        listen 127.0.0.1:$port_imap_realip proxy_protocol;
        protocol imap;
        set_real_ip_from 127.0.0.0/8;
    }

    server {
        listen 127.0.0.1:$port_smtp_proxied proxy_protocol;
        protocol smtp;
        smtp_auth none;
    }
}
"""


@dataclass
class Oracle:
    """nginx and mailgate on TEMPLATE and the auth server both ask."""

    auth: AuthServer
    proxies: dict[ProxyKind, RunningProxy]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    directory = tmp_path_factory.mktemp("auth-request")
    with ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        auth.set_default(AuthReply.error(REFUSAL))
        proxies = {
            kind: stack.enter_context(
                running_proxy(kind, TEMPLATE, directory / kind, auth_http=auth.url("/auth"))
            )
            for kind in KINDS
        }
        yield Oracle(auth, proxies)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data) + b"\r\n"


def exchange(*steps: bytes) -> Callable[[LineClient], None]:
    """Read the greeting, then send each step and read one reply to it."""

    def play(client: LineClient) -> None:
        client.reply()
        for step in steps:
            client.send(step)
            client.reply()

    return play


def cram_md5(command: bytes, *before: bytes) -> Callable[[LineClient], None]:
    """After the `before` exchanges, start CRAM-MD5 with `command`; answer with a fixed digest."""

    def play(client: LineClient) -> None:
        exchange(*before)(client)
        client.send(command)
        challenge = client.reply()
        assert challenge.startswith((b"+ ", b"334 ")), challenge
        client.send(b64(b"bob " + DIGEST))
        client.reply()

    return play


def apop(client: LineClient) -> None:
    client.reply()
    client.send(b"APOP bob " + DIGEST + b"\r\n")
    client.reply()


def with_proxy_header(header: bytes, play: Callable[[LineClient], None]) -> Callable[[LineClient], None]:
    def run(client: LineClient) -> None:
        client.send(header)
        play(client)

    return run


EHLO = b"EHLO client.example.org\r\n"
PROXY_V2_INET = (
    b"\r\n\r\n\x00\r\nQUIT\n"
    + bytes([0x21, 0x11])
    + struct.pack("!H", 12)
    + socket.inet_aton("198.51.100.7")
    + socket.inet_aton("203.0.113.9")
    + struct.pack("!HH", 51234, 143)
)

# name: (server, client script). Every script ends once the client has read the refusal.
SESSIONS: dict[str, tuple[str, Callable[[LineClient], None]]] = {
    "imap-login-quoted": ("imap", exchange(b'a1 LOGIN "us%er" "pa ss\\\\w\\"rd"\r\n')),
    "imap-login-literals": (
        "imap",
        exchange(b"a1 LOGIN {5}\r\n", b"al ce {6}\r\n", b"p\x01%\xc3\xa9s\r\n"),
    ),
    "imap-authenticate-plain": (
        "imap",
        exchange(b"a2 AUTHENTICATE PLAIN\r\n", b64(b"authz\x00alice\x00secret")),
    ),
    "imap-authenticate-login": (
        "imap",
        exchange(b"a3 AUTHENTICATE LOGIN\r\n", b64(b"alice"), b64(b"se cret")),
    ),
    "imap-authenticate-cram-md5": ("imap", cram_md5(b"a4 AUTHENTICATE CRAM-MD5\r\n")),
    "pop3-user-pass": ("pop3", exchange(b"USER bob \r\n", b"PASS s3cr3t with spaces\r\n")),
    "pop3-apop": ("pop3", apop),
    "pop3-auth-plain-initial-response": (
        "pop3",
        exchange(b"AUTH PLAIN " + b64(b"\x00bob\x00secret")),
    ),
    "pop3-auth-login": ("pop3", exchange(b"AUTH LOGIN\r\n", b64(b"bob"), b64(b"secret"))),
    "pop3-auth-cram-md5": ("pop3", cram_md5(b"AUTH CRAM-MD5\r\n")),
    "smtp-auth-plain": ("smtp", exchange(EHLO, b"AUTH PLAIN " + b64(b"\x00alice\x00pass"))),
    "smtp-auth-login-after-helo": (
        "smtp",
        exchange(b"HELO old.example\r\n", b"AUTH LOGIN " + b64(b"alice"), b64(b"pass")),
    ),
    "smtp-auth-cram-md5": ("smtp", cram_md5(b"AUTH CRAM-MD5\r\n", EHLO)),
    "smtp-none-after-ehlo": (
        "smtp",
        exchange(
            EHLO, b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n", b"RCPT TO:<b@example.net>\r\n"
        ),
    ),
    "smtp-none-after-helo": (
        "smtp",
        exchange(
            b"HELO client\r\n", b"MAIL FROM:<>\r\n", b"RCPT  TO:<postmaster@example.net> NOTIFY=NEVER\r\n"
        ),
    ),
    "imap-proxy-v1-realip": (
        "imap_realip",
        with_proxy_header(
            b"PROXY TCP6 2001:DB8:0:0::7 2001:db8::1 40000 143\r\n", exchange(b"a LOGIN u p\r\n")
        ),
    ),
    "imap-proxy-v2-realip": ("imap_realip", with_proxy_header(PROXY_V2_INET, exchange(b"a LOGIN u p\r\n"))),
    "smtp-proxy-v1-without-realip": (
        "smtp_proxied",
        with_proxy_header(
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1025 25\r\n",
            exchange(EHLO, b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"),
        ),
    ),
}


def requests_of(
    oracle: Oracle, kind: ProxyKind, server: str, play: Callable[[LineClient], None]
) -> list[AuthRequest]:
    before = len(oracle.auth.requests)
    with LineClient(oracle.proxies[kind].address(server)) as client:
        play(client)
    return oracle.auth.wait_for_requests(before + 1)[before:]


def comparable(request: AuthRequest) -> list[tuple[str, str]]:
    return [(name, normalise(value.encode("latin-1")).decode("latin-1")) for name, value in request.headers]


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_mailgate_sends_the_auth_request_nginx_sends(oracle: Oracle, name: str) -> None:
    server, play = SESSIONS[name]
    sent = {kind: requests_of(oracle, kind, server, play) for kind in KINDS}
    assert [request.request_line for request in sent["mailgate"]] == ["GET /auth HTTP/1.0"]
    assert [comparable(request) for request in sent["mailgate"]] == [
        comparable(request) for request in sent["nginx"]
    ]
    assert [normalise(request.raw) for request in sent["mailgate"]] == [
        normalise(request.raw) for request in sent["nginx"]
    ]


# name: (server, first attempt, second attempt); the first is refused with Auth-Wait, the session goes on.
RETRIES: dict[str, tuple[str, bytes, bytes, bytes]] = {
    "imap": ("imap", b"", b"a1 LOGIN alice first\r\n", b"a2 LOGIN alice second\r\n"),
    "pop3": ("pop3", b"", b"USER bob\r\nPASS first\r\n", b"USER bob\r\nPASS second\r\n"),
    "smtp": (
        "smtp",
        EHLO,
        b"AUTH PLAIN " + b64(b"\x00al\x00first"),
        b"AUTH PLAIN " + b64(b"\x00al\x00second"),
    ),
}


def retried_requests(oracle: Oracle, kind: ProxyKind, name: str) -> tuple[list[AuthRequest], list[bytes]]:
    """The requests of a session whose first login is refused with `Auth-Wait: 1`, and the refusals."""
    server, before, first, second = RETRIES[name]
    start = len(oracle.auth.requests)
    oracle.auth.respond_with(AuthReply.error("Try again", wait=1))
    refusals = []
    with LineClient(oracle.proxies[kind].address(server)) as client:
        client.reply()
        if before:
            client.send(before)
            client.reply()
        for attempt in (first, second):
            for line in attempt.splitlines(keepends=True):
                client.send(line)
                reply = client.reply()
            refusals.append(reply)
    return oracle.auth.wait_for_requests(start + 2)[start:], refusals


@pytest.mark.parametrize("name", sorted(RETRIES))
def test_after_a_refusal_with_auth_wait_the_next_request_carries_the_next_login_attempt(
    oracle: Oracle, name: str
) -> None:
    sent = {kind: retried_requests(oracle, kind, name) for kind in KINDS}
    requests, refusals = sent["mailgate"]
    assert [request.header("Auth-Login-Attempt") for request in requests] == ["1", "2"]
    assert [comparable(request) for request in requests] == [
        comparable(request) for request in sent["nginx"][0]
    ]
    assert refusals == sent["nginx"][1]
    assert b"Try again" in refusals[0]
    assert REFUSAL.encode() in refusals[1]


def test_custom_auth_http_headers_end_every_request_in_configuration_order(oracle: Oracle) -> None:
    server, play = SESSIONS["smtp-none-after-ehlo"]
    (request,) = requests_of(oracle, "mailgate", server, play)
    assert request.headers[-2:] == [("X-Auth-Key", "s3cret key"), ("X-Tenant", "blue")]
    assert request.header("Auth-SMTP-From") == "MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME"


def test_realip_makes_the_proxy_header_source_the_client_ip(oracle: Oracle) -> None:
    server, play = SESSIONS["imap-proxy-v1-realip"]
    (request,) = requests_of(oracle, "mailgate", server, play)
    assert request.header("Client-IP") == "2001:db8::7"
    assert request.header("Proxy-Protocol-Addr") == "2001:DB8:0:0::7"  # as received
    server, play = SESSIONS["smtp-proxy-v1-without-realip"]
    (request,) = requests_of(oracle, "mailgate", server, play)
    assert request.header("Client-IP") == "127.0.0.1"  # no set_real_ip_from on this server
    assert request.header("Proxy-Protocol-Addr") == "192.0.2.1"
