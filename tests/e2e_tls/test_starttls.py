"""`listen ... ssl` and `starttls on|off|only` through whole sessions, mailgate against Debian's nginx.

Python's imaplib, poplib and smtplib see the capabilities before and after TLS; raw sessions (TLS by Python's
ssl) pin the refusals byte for byte and the CVE-2014-3556 defence: plaintext pipelined behind STARTTLS/STLS is
never executed. Every session here ends at authentication (the auth server refuses), and the auth request
says whether TLS was on.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.e2e_tls.support import (
    KINDS,
    REFUSAL,
    SERVER_NAME,
    Conversation,
    Proxy,
    client_context,
    mail_config,
    running_both,
    s_client,
)
from tests.support.loopback import IPV4_LOOPBACK
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    server { listen 127.0.0.1:$imap_off; protocol imap; }
    server { listen 127.0.0.1:$imap_on; protocol imap; starttls on; }
    server { listen 127.0.0.1:$imap_only; protocol imap; starttls only; }
    server { listen 127.0.0.1:$imap_ssl ssl; protocol imap; starttls on; }
    server { listen 127.0.0.1:$pop3_off; protocol pop3; }
    server { listen 127.0.0.1:$pop3_on; protocol pop3; starttls on; }
    server { listen 127.0.0.1:$pop3_only; protocol pop3; starttls only; }
    server { listen 127.0.0.1:$pop3_ssl ssl; protocol pop3; starttls on; }
    server { listen 127.0.0.1:$smtp_off; protocol smtp; }
    server { listen 127.0.0.1:$smtp_on; protocol smtp; starttls on; }
    server { listen 127.0.0.1:$smtp_only; protocol smtp; starttls only; }
    server { listen 127.0.0.1:$smtp_ssl ssl; protocol smtp; starttls on; }
"""
)

TIMEOUT = 15.0
PROTOCOLS = ("imap", "pop3", "smtp")


@pytest.fixture(scope="module")
def proxies(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    with running_both(TEMPLATE, pki.directory, tmp_path_factory.mktemp("starttls")) as both:
        yield both


Dialogue = Callable[[Conversation], None]


def transcript(proxy: Proxy, server: str, dialogue: Dialogue) -> list[bytes]:
    """What the server sent, reply by reply, in a session driven by `dialogue`."""
    implicit = client_context() if server.endswith("_ssl") else None
    with Conversation.open(proxy.port(server), implicit) as conversation:
        dialogue(conversation)
    return conversation.received


def both_transcripts(proxies: dict[str, Proxy], server: str, dialogue: Dialogue) -> list[bytes]:
    """mailgate's transcript, after checking that nginx's is the same, byte for byte."""
    seen = {kind: transcript(proxies[kind], server, dialogue) for kind in KINDS}
    assert seen["mailgate"] == seen["nginx"]
    return seen["mailgate"]


# --- Python's standard clients --------------------------------------------------------------------------


def imaplib_capabilities(port: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    client = imaplib.IMAP4(IPV4_LOOPBACK, port, timeout=TIMEOUT)
    try:
        before = client.capabilities
        client.starttls(client_context())
        return before, client.capabilities
    finally:
        client.shutdown()


def poplib_capabilities(port: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    client = poplib.POP3(IPV4_LOOPBACK, port, timeout=TIMEOUT)
    try:
        before = client.capa()
        client.stls(client_context())
        return before, client.capa()
    finally:
        client.close()


def smtplib_extensions(port: int) -> tuple[dict[str, str], dict[str, str]]:
    client = smtplib.SMTP(IPV4_LOOPBACK, port, timeout=TIMEOUT, local_hostname="client.example.org")
    try:
        client.ehlo()
        before = dict(client.esmtp_features)
        client.starttls(context=client_context())
        client.ehlo()
        return before, dict(client.esmtp_features)
    finally:
        client.close()


def test_imaplib_sees_starttls_offered_and_gone_after_tls(proxies: dict[str, Proxy]) -> None:
    seen = {kind: imaplib_capabilities(proxies[kind].port("imap_on")) for kind in KINDS}
    before, after = seen["mailgate"]
    assert seen["mailgate"] == seen["nginx"]
    assert "STARTTLS" in before and "AUTH=PLAIN" in before
    assert "STARTTLS" not in after and "AUTH=PLAIN" in after


def test_imaplib_sees_login_disabled_until_tls_under_starttls_only(proxies: dict[str, Proxy]) -> None:
    seen = {kind: imaplib_capabilities(proxies[kind].port("imap_only")) for kind in KINDS}
    before, after = seen["mailgate"]
    assert seen["mailgate"] == seen["nginx"]
    assert "LOGINDISABLED" in before and "AUTH=PLAIN" not in before
    assert "LOGINDISABLED" not in after and "STARTTLS" not in after and "AUTH=PLAIN" in after


@pytest.mark.parametrize("server", ["pop3_on", "pop3_only"])
def test_poplib_sees_stls_offered_and_gone_after_tls(proxies: dict[str, Proxy], server: str) -> None:
    seen = {kind: poplib_capabilities(proxies[kind].port(server)) for kind in KINDS}
    before, after = seen["mailgate"]
    assert seen["mailgate"] == seen["nginx"]
    assert "STLS" in before and "STLS" not in after
    assert ("USER" in before) is (server == "pop3_on")
    assert "USER" in after and after["SASL"] == ["PLAIN", "LOGIN"]


@pytest.mark.parametrize("server", ["smtp_on", "smtp_only"])
def test_smtplib_sees_starttls_offered_and_gone_after_tls(proxies: dict[str, Proxy], server: str) -> None:
    seen = {kind: smtplib_extensions(proxies[kind].port(server)) for kind in KINDS}
    before, after = seen["mailgate"]
    assert seen["mailgate"] == seen["nginx"]
    assert "starttls" in before and "starttls" not in after
    assert ("auth" in before) is (server == "smtp_on")
    assert after["auth"].split() == ["PLAIN", "LOGIN"]


# --- refusals ---------------------------------------------------------------------------------------------


def starttls_refused(protocol: str) -> Dialogue:
    def dialogue(conversation: Conversation) -> None:
        conversation.reply(protocol)
        if protocol == "imap":
            conversation.send(b"a STARTTLS\r\n")
            conversation.reply(protocol, b"a")
        elif protocol == "pop3":
            conversation.send(b"STLS\r\n")
            conversation.reply(protocol)
        else:
            conversation.send(b"EHLO client.example.org\r\n")
            conversation.reply(protocol)
            conversation.send(b"STARTTLS\r\n")
            conversation.reply(protocol)

    return dialogue


# The protocol's answer to a command it does not take in this state.
REFUSED = {
    "imap": b"a BAD invalid command\r\n",
    "pop3": b"-ERR invalid command\r\n",
    "smtp": b"500 5.5.1 Invalid command\r\n",
}
REFUSAL_LINE = f"{REFUSAL}\r\n".encode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("where", ["off", "ssl"])
def test_starttls_is_refused_with_starttls_off_and_on_implicit_tls(
    proxies: dict[str, Proxy], protocol: str, where: str
) -> None:
    replies = both_transcripts(proxies, f"{protocol}_{where}", starttls_refused(protocol))
    assert replies[-1] == REFUSED[protocol]


def login_refused_before_tls(protocol: str) -> Dialogue:
    """Under `starttls only`: the login command is refused in clear, then accepted over TLS."""

    def dialogue(conversation: Conversation) -> None:
        conversation.reply(protocol)
        if protocol == "imap":
            conversation.send(b"a LOGIN user secret\r\n")
            conversation.reply(protocol, b"a")
            conversation.send(b"b STARTTLS\r\n")
            conversation.reply(protocol, b"b")
            conversation.start_tls(client_context())
            conversation.send(b"c LOGIN user secret\r\n")
            conversation.reply(protocol, b"c")
        elif protocol == "pop3":
            conversation.send(b"USER user\r\n")
            conversation.reply(protocol)
            conversation.send(b"STLS\r\n")
            conversation.reply(protocol)
            conversation.start_tls(client_context())
            conversation.send(b"USER user\r\nPASS secret\r\n")
            conversation.reply(protocol)
            conversation.reply(protocol)
        else:
            conversation.send(b"EHLO client.example.org\r\n")
            conversation.reply(protocol)
            conversation.send(b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n")
            conversation.reply(protocol)
            conversation.send(b"STARTTLS\r\n")
            conversation.reply(protocol)
            conversation.start_tls(client_context())
            conversation.send(b"EHLO client.example.org\r\n")
            conversation.reply(protocol)
            conversation.send(b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n")
            conversation.reply(protocol)

    return dialogue


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_starttls_only_refuses_login_in_clear_and_takes_it_over_tls(
    proxies: dict[str, Proxy], protocol: str
) -> None:
    before = {kind: len(proxies[kind].auth.requests) for kind in KINDS}
    replies = both_transcripts(proxies, f"{protocol}_only", login_refused_before_tls(protocol))
    requests = proxies["mailgate"].auth.requests[before["mailgate"] :]
    refused, refusal = (replies[1], replies[-1])
    if protocol == "smtp":
        refused = replies[2]  # after the EHLO reply
    assert refused == REFUSED[protocol]
    assert refusal == {"imap": b"c NO ", "pop3": b"-ERR ", "smtp": b"535 5.7.0 "}[protocol] + REFUSAL_LINE
    assert len(requests) == 1
    assert requests[0].header("Auth-SSL") == "on"
    assert requests[0].header("Auth-User") == "user"


def second_starttls(protocol: str) -> Dialogue:
    def dialogue(conversation: Conversation) -> None:
        conversation.reply(protocol)
        if protocol == "imap":
            conversation.send(b"a STARTTLS\r\n")
            conversation.reply(protocol, b"a")
            conversation.start_tls(client_context())
            conversation.send(b"b STARTTLS\r\n")
            conversation.reply(protocol, b"b")
        elif protocol == "pop3":
            conversation.send(b"STLS\r\n")
            conversation.reply(protocol)
            conversation.start_tls(client_context())
            conversation.send(b"STLS\r\n")
            conversation.reply(protocol)
        else:
            conversation.send(b"EHLO client.example.org\r\nSTARTTLS\r\n")
            conversation.reply(protocol)
            conversation.reply(protocol)
            conversation.start_tls(client_context())
            conversation.send(b"STARTTLS\r\n")
            conversation.reply(protocol)

    return dialogue


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_second_starttls_over_tls_is_refused(proxies: dict[str, Proxy], protocol: str) -> None:
    replies = both_transcripts(proxies, f"{protocol}_on", second_starttls(protocol))
    if protocol == "imap":
        assert replies[-1] == b"b BAD invalid command\r\n"
    else:
        assert replies[-1] == REFUSED[protocol]


# --- CVE-2014-3556: nothing pipelined behind STARTTLS runs -------------------------------------------------

# (the command and the injected one in the same write, the reply to our own command over TLS)
INJECTIONS = {
    "imap": (b"a STARTTLS\r\nb CAPABILITY\r\n", b"c NOOP\r\n", b"c"),
    "pop3": (b"STLS\r\nCAPA\r\n", b"NOOP\r\n", b""),
    "smtp": (b"STARTTLS\r\nHELO injected.example.org\r\n", b"NOOP\r\n", b""),
}


def injection(protocol: str) -> Dialogue:
    command, own, tag = INJECTIONS[protocol]

    def dialogue(conversation: Conversation) -> None:
        conversation.reply(protocol)
        if protocol == "smtp":
            conversation.send(b"EHLO client.example.org\r\n")
            conversation.reply(protocol)
        conversation.send(command)
        conversation.reply(protocol, b"a")
        conversation.start_tls(client_context())
        conversation.send(own)
        conversation.reply(protocol, tag)

    return dialogue


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_commands_pipelined_behind_starttls_are_never_executed(
    proxies: dict[str, Proxy], protocol: str
) -> None:
    replies = both_transcripts(proxies, f"{protocol}_on", injection(protocol))
    over_tls = replies[-1]
    # The first thing over TLS answers our own command: the injected one was dropped, not run late.
    if protocol == "imap":
        assert over_tls == b"c OK completed\r\n"
    elif protocol == "pop3":
        assert over_tls == b"+OK\r\n"
    else:
        assert over_tls == b"250 2.0.0 OK\r\n"


# A login pipelined behind STARTTLS, and the logout sent over TLS once the handshake is done.
INJECTED_LOGINS = {
    "imap": (b"a STARTTLS\r\nb LOGIN injected secret\r\n", b"c LOGOUT\r\n"),
    "pop3": (b"STLS\r\nUSER injected\r\nPASS secret\r\n", b"QUIT\r\n"),
    "smtp": (b"STARTTLS\r\nAUTH PLAIN AGluamVjdGVkAHNlY3JldA==\r\n", b"QUIT\r\n"),
}
LOGOUT_REPLIES = {"imap": b"* BYE\r\nc OK completed\r\n", "pop3": b"+OK\r\n", "smtp": b"221 2.0.0 Bye\r\n"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_login_pipelined_behind_starttls_never_reaches_the_auth_server(
    proxies: dict[str, Proxy], protocol: str
) -> None:
    injected, logout = INJECTED_LOGINS[protocol]

    def dialogue(conversation: Conversation) -> None:
        conversation.reply(protocol)
        if protocol == "smtp":
            conversation.send(b"EHLO client.example.org\r\n")
            conversation.reply(protocol)
        conversation.send(injected)
        conversation.reply(protocol, b"a")
        conversation.start_tls(client_context())
        conversation.send(logout)
        conversation.rest()

    before = {kind: len(proxies[kind].auth.requests) for kind in KINDS}
    replies = both_transcripts(proxies, f"{protocol}_on", dialogue)
    assert replies[-1] == LOGOUT_REPLIES[protocol]
    assert [proxies[kind].auth.requests[before[kind] :] for kind in KINDS] == [[], []]


# --- implicit TLS, and TLS records that arrive together ---------------------------------------------------

GREETINGS = {"imap": b"* OK IMAP4 ready\r\n", "pop3": b"+OK POP3 ready\r\n"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_implicit_tls_greets_over_tls_and_serves_the_session(
    proxies: dict[str, Proxy], protocol: str
) -> None:
    def dialogue(conversation: Conversation) -> None:
        conversation.reply(protocol)
        conversation.send(
            {"imap": b"a CAPABILITY\r\n", "pop3": b"CAPA\r\n", "smtp": b"EHLO x.example\r\n"}[protocol]
        )
        if protocol == "pop3":
            conversation.multiline()
        else:
            conversation.reply(protocol, b"a")

    replies = both_transcripts(proxies, f"{protocol}_ssl", dialogue)
    if protocol == "smtp":
        assert replies[0] == f"220 {SERVER_NAME} ESMTP ready\r\n".encode()
        assert b"STARTTLS" not in replies[1] and replies[1].endswith(b"250 AUTH PLAIN LOGIN\r\n")
    else:
        assert replies[0] == GREETINGS[protocol]
        assert b"STARTTLS" not in replies[1] and b"STLS" not in replies[1]


def test_two_tls_records_in_one_segment_are_both_answered(proxies: dict[str, Proxy]) -> None:
    """Pipelined commands in separate records that reach the server together (mailgate once kept the second
    record unread in OpenSSL's read-ahead buffer until more bytes came)."""

    def dialogue(conversation: Conversation) -> None:
        conversation.line()
        conversation.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        conversation.send(b"a CAPABILITY\r\n")
        conversation.send(b"b NOOP\r\n")
        conversation.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        conversation.reply("imap", b"b")

    replies = both_transcripts(proxies, "imap_ssl", dialogue)
    assert replies[-1].endswith(b"a OK completed\r\nb OK completed\r\n")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_s_client_command_typed_at_once_after_the_handshake_is_answered(
    proxies: dict[str, Proxy], protocol: str, mode: str
) -> None:
    """s_client sends what was typed right behind its TLS 1.3 Finished, often in the same segment.

    mailgate only: Debian's nginx 1.22 leaves such a command unanswered in about one run in three
    (implicit TLS), and the session hangs until the client gives up.
    """
    typed = {"imap": b"a CAPABILITY\na LOGOUT\n", "pop3": b"CAPA\nQUIT\n", "smtp": b"EHLO x.example\nQUIT\n"}
    answer = {"imap": "a OK completed", "pop3": "+OK", "smtp": "250 AUTH PLAIN LOGIN"}
    server = f"{protocol}_ssl" if mode == "implicit" else f"{protocol}_on"
    arguments = ["-tls1_3"] + (["-starttls", protocol] if mode == "starttls" else [])
    for _ in range(3):
        run = s_client(proxies["mailgate"].port(server), *arguments, typed=typed[protocol])
        assert run.handshake_done, run.output
        assert run.has_line(answer[protocol]), run.output
