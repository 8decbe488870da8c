"""Backends that speak correctly but awkwardly: the hand-off from backend login to relay loses nothing.

Real servers send multi-line greetings, split a reply over several segments, or send more right behind the
reply that completes the login. Each scripted backend here is reached through nginx and through mailgate on
the same file; what the client receives, through a command relayed after the login, must be the same bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.harness import KINDS, LineClient, ProxyKind, RunningProxy, running_proxy
from tests.support.authserver import AuthReply, AuthServer
from tests.support.fake_backend import Echo, Expect, FakeBackend, Send, Step
from tests.support.loopback import IPV4_LOOPBACK

pytestmark = pytest.mark.nginx

TEMPLATE = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;

    server {
        listen 127.0.0.1:$port_imap;
        protocol imap;
    }

    server {
        listen 127.0.0.1:$port_pop3;
        protocol pop3;
    }

    server {
        listen 127.0.0.1:$port_smtp;
        protocol smtp;
    }

    server {
        listen 127.0.0.1:$port_smtp_relay;
        protocol smtp;
        smtp_auth none;
        xclient off;
    }
}
"""


@dataclass
class Setup:
    auth: AuthServer
    proxies: dict[ProxyKind, RunningProxy]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("backend-dialogue")
    with ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        proxies = {
            kind: stack.enter_context(
                running_proxy(kind, TEMPLATE, directory / kind, auth_http=auth.url("/auth"))
            )
            for kind in KINDS
        }
        yield Setup(auth, proxies)


def dribbled(data: bytes) -> list[Step]:
    """`data` sent a few bytes at a time."""
    return [Send(data[offset : offset + 3]) for offset in range(0, len(data), 3)]


IMAP_LOGIN_EXPECTS = [Expect(b"a1 LOGIN {5}\r\n"), Expect(b"alice {6}\r\n"), Expect(b"secret\r\n")]
POP3_LOGIN_EXPECTS = [Expect(b"USER alice\r\n"), Expect(b"PASS secret\r\n")]
SMTP_EXPECTS = [
    Expect(b"EHLO mail.example.com\r\n"),
    Expect(b"XCLIENT ADDR=127.0.0.1 LOGIN=alice NAME=[UNAVAILABLE]\r\n"),
    Expect(b"EHLO client.example.org\r\n"),
]


def interleave(replies: list[list[Step]], expects: list[Expect]) -> list[Step]:
    """replies[0], expects[0], replies[1], ...: the backend's side of a login, then an echo."""
    steps: list[Step] = []
    for index, reply in enumerate(replies):
        steps += reply
        if index < len(expects):
            steps.append(expects[index])
    return [*steps, Echo()]


# name: (server, backend script, client commands after the greeting, a command relayed after the login)
DIALOGUES: dict[str, tuple[str, list[Step], list[bytes]]] = {
    "imap-dribbled-replies": (
        "imap",
        interleave(
            [
                dribbled(b"* OK hi\r\n"),
                dribbled(b"+ OK\r\n"),
                dribbled(b"+ OK\r\n"),
                dribbled(b"a1 OK in\r\n"),
            ],
            IMAP_LOGIN_EXPECTS,
        ),
        [b"a1 LOGIN alice secret\r\n"],
    ),
    "imap-data-right-behind-the-login-reply": (
        "imap",
        interleave(
            [
                [Send(b"* OK hi\r\n")],
                [Send(b"+ OK\r\n")],
                [Send(b"+ OK\r\n")],
                [Send(b"a1 OK in\r\n* 1 EXISTS\r\n")],
            ],
            IMAP_LOGIN_EXPECTS,
        ),
        [b"a1 LOGIN alice secret\r\n"],
    ),
    "imap-greeting-with-capabilities-and-a-continuation-with-text": (
        "imap",
        interleave(
            [
                [Send(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR] Backend ready.\r\n")],
                [Send(b"+ Ready for literal data\r\n")],
                [Send(b"+ Ready for literal data\r\n")],
                [Send(b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")],
            ],
            IMAP_LOGIN_EXPECTS,
        ),
        [b"a1 LOGIN alice secret\r\n"],
    ),
    "pop3-dribbled-replies": (
        "pop3",
        interleave(
            [dribbled(b"+OK hi <1.2@backend>\r\n"), dribbled(b"+OK\r\n"), dribbled(b"+OK in\r\n")],
            POP3_LOGIN_EXPECTS,
        ),
        [b"USER alice\r\n", b"PASS secret\r\n"],
    ),
    "smtp-multi-line-greeting-and-replies": (
        "smtp",
        interleave(
            [
                [Send(b"220-backend.example.net ESMTP\r\n220-no UCE\r\n220 welcome\r\n")],
                [Send(b"250-backend.example.net\r\n250-PIPELINING\r\n250-XCLIENT ADDR NAME\r\n250 OK\r\n")],
                [Send(b"220-backend.example.net\r\n220 ESMTP\r\n")],
                dribbled(b"250-backend.example.net\r\n250 8BITMIME\r\n"),
            ],
            SMTP_EXPECTS,
        ),
        [b"EHLO client.example.org\r\n", b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"],
    ),
    "smtp-relay-dribbled-rcpt-reply": (
        "smtp_relay",
        interleave(
            [
                [Send(b"220 backend ESMTP\r\n")],
                [Send(b"250 backend\r\n")],
                [Send(b"250 2.1.0 Ok\r\n")],
                dribbled(b"250 2.1.5 Ok\r\n"),
            ],
            [
                Expect(b"HELO mail.example.com\r\n"),
                Expect(b"MAIL FROM:<a@example.org>\r\n"),
                Expect(b"RCPT TO:<b@example.net>\r\n"),
            ],
        ),
        [b"HELO client.example.org\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"],
    ),
    "backend-greeting-longer-than-proxy-buffer": (
        "imap",
        [Send(b"* OK " + b"x" * 5000), Expect(b"\0never sent\0")],
        [b"a1 LOGIN alice secret\r\n"],
    ),
}
AFTER_LOGIN = b"relayed after the login\r\n"


def converse(proxy: RunningProxy, server: str, commands: list[bytes]) -> bytes:
    """Everything the client receives: the greeting, a reply per command, then the echo of AFTER_LOGIN (or
    the rest up to the close if the login failed)."""
    with LineClient(proxy.address(server)) as client:
        seen = client.reply()
        for command in commands:
            client.send(command)
            seen += client.reply()
        try:
            client.send(AFTER_LOGIN)
        except OSError:
            return seen + client.rest() + b"[closed]"
        seen += client.until(AFTER_LOGIN)
        if not seen.endswith(AFTER_LOGIN):
            seen += b"[closed]"
        return seen


@pytest.mark.parametrize("name", DIALOGUES)
def test_the_client_sees_what_nginx_shows_it_of_an_awkward_backend(setup: Setup, name: str) -> None:
    server, script, commands = DIALOGUES[name]
    seen = {}
    with FakeBackend(script) as backend:
        for kind in KINDS:
            setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, backend.port))
            seen[kind] = converse(setup.proxies[kind], server, commands)
    assert seen["mailgate"] == seen["nginx"]
    assert seen["mailgate"].endswith(
        b"* BAD internal server error\r\n[closed]" if name.startswith("backend-greeting") else AFTER_LOGIN
    )
