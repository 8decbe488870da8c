"""Properties of all three engines on random and mutated input, split arbitrarily.

Nothing raises; every reply is a sequence of CRLF lines of the protocol's shape; where the whole input fits
in the buffer, how it is split does not change what the client gets; STARTTLS never lets a plaintext byte
through; bytes behind an authenticating command reach the backend untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.config.model import (
    ImapAuth,
    ImapSettings,
    Pop3Auth,
    Pop3Settings,
    Protocol,
    ServerConfig,
    SmtpAuth,
    SmtpSettings,
    StartTls,
)
from mailgate.protocol.engine import PreAuthEngine
from mailgate.protocol.events import Authenticate, Close, Event, Log, NeedData, Reply
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.imap import ImapPreAuth
from mailgate.protocol.pop3 import Pop3PreAuth
from mailgate.protocol.smtp import SmtpPreAuth
from tests.protocol.driver import SALT, server_config

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

IMAP_LINE = re.compile(rb"(\* |\+ |[A-Za-z0-9._-]{1,32} )[^\r\n]*\r\n")
SMTP_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n")
POP3_FIRST_LINE = re.compile(rb"(\+OK|-ERR |\+ )[^\r\n]*\r\n")
POP3_LIST_LINE = re.compile(rb"[^\r\n]*\r\n")


def imap_reply_is_valid(data: bytes) -> bool:
    lines = data.splitlines(keepends=True)
    return bool(lines) and all(IMAP_LINE.fullmatch(line) for line in lines)


def smtp_reply_is_valid(data: bytes) -> bool:
    lines = data.splitlines(keepends=True)
    if not lines or not all(SMTP_LINE.fullmatch(line) for line in lines):
        return False
    codes = {line[:3] for line in lines}
    return len(codes) == 1 and all(line[3:4] == b"-" for line in lines[:-1]) and lines[-1][3:4] == b" "


def pop3_reply_is_valid(data: bytes) -> bool:
    lines = data.splitlines(keepends=True)
    if not lines or not POP3_FIRST_LINE.fullmatch(lines[0]):
        return False
    if len(lines) == 1:
        return True
    return (
        lines[0].startswith(b"+OK")
        and lines[-1] == b".\r\n"
        and all(POP3_LIST_LINE.fullmatch(x) for x in lines)
    )


@dataclass(frozen=True)
class Flavour:
    """A protocol, its engine, its reply checker, and words its clients use (to steer random input)."""

    protocol: Protocol
    engine_class: Callable[..., PreAuthEngine]
    valid_reply: Callable[[bytes], bool]
    words: tuple[bytes, ...]


FLAVOURS = {
    Protocol.IMAP: Flavour(
        Protocol.IMAP,
        ImapPreAuth,
        imap_reply_is_valid,
        (b"a1 ", b"* ", b"NOOP", b"LOGIN", b"LOGOUT", b"CAPABILITY", b"AUTHENTICATE", b"STARTTLS", b"PLAIN",
         b"LOGIN", b"CRAM-MD5", b"EXTERNAL", b"{3}\r\n", b"{2+}\r\n", b"{0}", b'"', b"\\", b"AHUAcA==", b"*"),
    ),
    Protocol.POP3: Flavour(
        Protocol.POP3,
        Pop3PreAuth,
        pop3_reply_is_valid,
        (b"USER", b"PASS", b"APOP", b"QUIT", b"CAPA", b"AUTH", b"NOOP", b"STLS", b"PLAIN", b"LOGIN",
         b"CRAM-MD5", b"EXTERNAL", b"AHUAcA==", b"dQ=="),
    ),
    Protocol.SMTP: Flavour(
        Protocol.SMTP,
        SmtpPreAuth,
        smtp_reply_is_valid,
        (b"HELO", b"EHLO", b"QUIT", b"AUTH", b"NOOP", b"MAIL", b"RSET", b"RCPT", b"VRFY", b"STARTTLS",
         b"FROM:<a>", b"TO:<b>", b"PLAIN", b"LOGIN", b"CRAM-MD5", b"EXTERNAL", b"AHUAcA==", b"dQ=="),
    ),
}  # fmt: skip


def configuration(protocol: Protocol, starttls: StartTls, small_buffer: bool) -> ServerConfig:
    size = 64 if small_buffer else 4096
    return server_config(
        protocol,
        starttls=starttls,
        max_errors=1000,
        imap=ImapSettings(auth=frozenset(ImapAuth), client_buffer=size),
        pop3=Pop3Settings(auth=frozenset(Pop3Auth)),
        smtp=SmtpSettings(auth=frozenset(SmtpAuth), client_buffer=size, capabilities=("SIZE 10", "X")),
    )


def fragments(words: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    separators = st.sampled_from([b" ", b"  ", b"\r\n", b"\n", b"\r", b"\t", b""])
    pieces = st.one_of(st.sampled_from(words), st.binary(max_size=6), separators)
    return st.lists(pieces, max_size=40).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@dataclass
class Outcome:
    """What the client saw (replies, rejection lines) and what else the session was asked to do."""

    client: list[bytes]
    others: list[Event]
    closed: bool


def play(engine: PreAuthEngine, chunks: list[bytes]) -> Outcome:
    """A session that rejects every login (with Auth-Wait) and completes every TLS handshake."""
    outcome = Outcome([], [], closed=False)
    for chunk in chunks:
        engine.receive_data(chunk)
        while True:
            event = engine.next_event()
            if isinstance(event, NeedData):
                break
            if isinstance(event, Reply):
                outcome.client.append(event.data)
                continue
            outcome.others.append(event)
            if isinstance(event, Authenticate):
                outcome.client.append(engine.auth_failed(b"Invalid login", None))
            elif isinstance(event, StartTlsEvent):
                engine.tls_established()
            elif isinstance(event, Close):
                outcome.closed = True
                return outcome
    return outcome


@PROPERTY_SETTINGS
@given(
    protocol=st.sampled_from(list(Protocol)),
    starttls=st.sampled_from(list(StartTls)),
    small_buffer=st.booleans(),
    data=st.data(),
)
def test_random_input_never_raises_and_every_reply_has_the_protocol_shape(
    protocol: Protocol, starttls: StartTls, small_buffer: bool, data: st.DataObject
) -> None:
    flavour = FLAVOURS[protocol]
    payload = data.draw(st.one_of(fragments(flavour.words), st.binary(max_size=300)))
    chunks = split(payload, data.draw(st.lists(st.integers(min_value=0), max_size=8)))
    engine = flavour.engine_class(
        configuration(protocol, starttls, small_buffer), tls_active=False, salt=SALT
    )
    outcome = play(engine, chunks)
    for reply in outcome.client:
        assert flavour.valid_reply(reply), reply
    assert Close("internal error") not in outcome.others
    assert all(e.level == "info" for e in outcome.others if isinstance(e, Log))


@PROPERTY_SETTINGS
@given(protocol=st.sampled_from(list(Protocol)), data=st.data())
def test_mutated_transcripts_never_raise_and_keep_the_protocol_shape(
    protocol: Protocol, data: st.DataObject
) -> None:
    transcript = {
        Protocol.IMAP: b'a CAPABILITY\r\nb LOGIN {3}\r\nbob "p w"\r\nc AUTHENTICATE PLAIN\r\nAHUAcA==\r\n'
        b"d LOGOUT\r\n",
        Protocol.POP3: b"CAPA\r\nUSER bob\r\nPASS p w\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\nAPOP a b\r\nQUIT\r\n",
        Protocol.SMTP: b"EHLO x\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\nMAIL FROM:<a>\r\nRCPT TO:<b>\r\nQUIT\r\n",
    }[protocol]
    mutated = bytearray(transcript)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        position = data.draw(st.integers(min_value=0, max_value=len(mutated)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.integers(min_value=0, max_value=255))
        if action == "insert":
            mutated.insert(position, byte)
        elif position < len(mutated):
            if action == "delete":
                del mutated[position]
            else:
                mutated[position] = byte
    flavour = FLAVOURS[protocol]
    chunks = split(bytes(mutated), data.draw(st.lists(st.integers(min_value=0), max_size=8)))
    engine = flavour.engine_class(configuration(protocol, StartTls.ON, False), tls_active=False, salt=SALT)
    for reply in play(engine, chunks).client:
        assert flavour.valid_reply(reply), reply


@PROPERTY_SETTINGS
@given(protocol=st.sampled_from(list(Protocol)), data=st.data())
def test_how_input_is_split_does_not_change_the_outcome(protocol: Protocol, data: st.DataObject) -> None:
    flavour = FLAVOURS[protocol]
    limit = 127 if protocol is Protocol.POP3 else 4095  # the whole input fits in the buffer
    payload = data.draw(fragments(flavour.words).map(lambda b: b[:limit]))
    chunks = split(payload, data.draw(st.lists(st.integers(min_value=0), max_size=12)))
    server = configuration(protocol, StartTls.OFF, False)
    whole = play(flavour.engine_class(server, tls_active=False, salt=SALT), [payload])
    pieces = play(flavour.engine_class(server, tls_active=False, salt=SALT), chunks)
    assert whole == pieces


@PROPERTY_SETTINGS
@given(protocol=st.sampled_from(list(Protocol)), behind=st.binary(max_size=200))
def test_nothing_sent_behind_starttls_is_ever_processed(protocol: Protocol, behind: bytes) -> None:
    command, accepted = {
        Protocol.IMAP: (b"s STARTTLS\r\n", b"s OK completed\r\n"),
        Protocol.POP3: (b"STLS\r\n", b"+OK\r\n"),
        Protocol.SMTP: (b"STARTTLS\r\n", b"220 2.0.0 Start TLS\r\n"),
    }[protocol]
    engine = FLAVOURS[protocol].engine_class(configuration(protocol, StartTls.ON, False), tls_active=False)
    engine.receive_data(command + behind)
    assert engine.next_event() == Reply(accepted)
    assert engine.next_event() == StartTlsEvent()
    engine.tls_established()
    assert engine.next_event() == NeedData()
    assert engine.take_unconsumed() == b""


@PROPERTY_SETTINGS
@given(protocol=st.sampled_from(list(Protocol)), behind=st.binary(max_size=10_000))
def test_bytes_behind_the_authenticating_command_reach_the_backend_untouched(
    protocol: Protocol, behind: bytes
) -> None:
    login = {
        Protocol.IMAP: b"a LOGIN bob secret\r\n",
        Protocol.POP3: b"USER bob\r\nPASS secret\r\n",
        Protocol.SMTP: b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
    }[protocol]
    engine = FLAVOURS[protocol].engine_class(configuration(protocol, StartTls.OFF, False), tls_active=False)
    engine.receive_data(login + behind)
    events = [engine.next_event() for _ in range(login.count(b"\n"))]
    assert isinstance(events[-1], Authenticate)
    assert engine.next_event() == NeedData()
    assert engine.take_unconsumed() == behind
