"""`starttls off|on|only` × TLS active or not × protocol: capabilities, STARTTLS, login refusal (§4.4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mailgate.config.model import Protocol, StartTls
from mailgate.protocol.engine import PreAuthEngine
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.imap import ImapPreAuth
from mailgate.protocol.pop3 import Pop3PreAuth
from mailgate.protocol.smtp import SmtpPreAuth
from tests.protocol.driver import SALT, Session, credentials, replies, server_config

IMAP_PLAIN = b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN\r\nc OK completed\r\n"
IMAP_STARTTLS = b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN STARTTLS\r\nc OK completed\r\n"
IMAP_ONLY = b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS STARTTLS LOGINDISABLED\r\nc OK completed\r\n"
POP3_PLAIN = b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\n.\r\n"
POP3_STARTTLS = b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n"
POP3_ONLY = b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\n.\r\n"
SMTP_PLAIN = b"250-mx.example\r\n250 AUTH PLAIN LOGIN\r\n"
SMTP_STARTTLS = b"250-mx.example\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"
SMTP_ONLY = b"250-mx.example\r\n250 STARTTLS\r\n"


@dataclass(frozen=True)
class ProtocolCase:
    protocol: Protocol
    engine_class: Callable[..., PreAuthEngine]
    capability_command: bytes
    capabilities: dict[str, bytes]
    starttls_command: bytes
    starttls_accepted: bytes
    starttls_refused: bytes
    login: bytes
    login_refused: bytes


IMAP = ProtocolCase(
    Protocol.IMAP,
    ImapPreAuth,
    b"c CAPABILITY\r\n",
    {"plain": IMAP_PLAIN, "starttls": IMAP_STARTTLS, "only": IMAP_ONLY},
    b"s STARTTLS\r\n",
    b"s OK completed\r\n",
    b"s BAD invalid command\r\n",
    b"l LOGIN u p\r\n",
    b"l BAD invalid command\r\n",
)
POP3 = ProtocolCase(
    Protocol.POP3,
    Pop3PreAuth,
    b"CAPA\r\n",
    {"plain": POP3_PLAIN, "starttls": POP3_STARTTLS, "only": POP3_ONLY},
    b"STLS\r\n",
    b"+OK\r\n",
    b"-ERR invalid command\r\n",
    b"APOP u d\r\nAUTH PLAIN AHUAcA==\r\nAUTH\r\nUSER u\r\nPASS p\r\n",
    b"-ERR invalid command\r\n" * 5,
)
SMTP = ProtocolCase(
    Protocol.SMTP,
    SmtpPreAuth,
    b"EHLO c\r\n",
    {"plain": SMTP_PLAIN, "starttls": SMTP_STARTTLS, "only": SMTP_ONLY},
    b"STARTTLS\r\n",
    b"220 2.0.0 Start TLS\r\n",
    b"500 5.5.1 Invalid command\r\n",
    b"AUTH PLAIN AHUAcA==\r\nAUTH\r\n",
    b"500 5.5.1 Invalid command\r\n" * 2,
)


@dataclass(frozen=True)
class Mode:
    starttls: StartTls
    tls_active: bool
    capabilities: str
    offers_starttls: bool
    refuses_login: bool


MODES = [
    Mode(StartTls.OFF, False, "plain", offers_starttls=False, refuses_login=False),
    Mode(StartTls.OFF, True, "plain", offers_starttls=False, refuses_login=False),
    Mode(StartTls.ON, False, "starttls", offers_starttls=True, refuses_login=False),
    Mode(StartTls.ON, True, "plain", offers_starttls=False, refuses_login=False),
    Mode(StartTls.ONLY, False, "only", offers_starttls=True, refuses_login=True),
    Mode(StartTls.ONLY, True, "plain", offers_starttls=False, refuses_login=False),
]


def new_session(case: ProtocolCase, starttls: StartTls, *, tls_active: bool) -> Session:
    server = server_config(case.protocol, starttls=starttls)
    return Session(case.engine_class(server, tls_active=tls_active, salt=SALT))


@pytest.mark.parametrize("case", [IMAP, POP3, SMTP], ids=lambda case: case.protocol.value)
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: f"{mode.starttls.value}-tls{int(mode.tls_active)}")
def test_capabilities(case: ProtocolCase, mode: Mode) -> None:
    session = new_session(case, mode.starttls, tls_active=mode.tls_active)
    assert session.output(case.capability_command) == case.capabilities[mode.capabilities]


@pytest.mark.parametrize("case", [IMAP, POP3, SMTP], ids=lambda case: case.protocol.value)
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: f"{mode.starttls.value}-tls{int(mode.tls_active)}")
def test_starttls_command(case: ProtocolCase, mode: Mode) -> None:
    events = new_session(case, mode.starttls, tls_active=mode.tls_active).send(case.starttls_command)
    if mode.offers_starttls:
        assert replies(events) == case.starttls_accepted
        assert isinstance(events[-1], StartTlsEvent)
    else:
        assert replies(events) == case.starttls_refused
        assert not any(isinstance(event, StartTlsEvent) for event in events)


@pytest.mark.parametrize("case", [IMAP, POP3, SMTP], ids=lambda case: case.protocol.value)
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: f"{mode.starttls.value}-tls{int(mode.tls_active)}")
def test_login_refusal(case: ProtocolCase, mode: Mode) -> None:
    events = new_session(case, mode.starttls, tls_active=mode.tls_active).send(case.login)
    if mode.refuses_login:
        assert replies(events) == case.login_refused
        assert not credentials(events)
    else:
        assert len(credentials(events)) == 1


@pytest.mark.parametrize("case", [IMAP, POP3, SMTP], ids=lambda case: case.protocol.value)
def test_after_starttls_the_capabilities_are_the_plain_ones_and_login_is_allowed(case: ProtocolCase) -> None:
    session = new_session(case, StartTls.ONLY, tls_active=False)
    session.send(case.starttls_command)
    session.engine.tls_established()
    assert session.engine.tls_active
    assert session.output(case.capability_command) == case.capabilities["plain"]
    assert len(credentials(session.send(case.login))) == 1
