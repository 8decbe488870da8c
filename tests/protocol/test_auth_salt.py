"""Which attempts carry the session's salt to the auth request (nginx sends Auth-Salt with every method but
plain once the client has seen a salt: the POP3 greeting, or an IMAP/SMTP CRAM-MD5 challenge)."""

from __future__ import annotations

import base64

from mailgate.config.model import ImapAuth, ImapSettings, Pop3Auth, Pop3Settings, Protocol
from mailgate.protocol.credentials import AuthMethod
from mailgate.protocol.imap import ImapPreAuth
from mailgate.protocol.pop3 import Pop3PreAuth
from tests.protocol.driver import SALT, Session, credentials, server_config

POP3_SALTED = Pop3Settings(auth=frozenset({Pop3Auth.PLAIN, Pop3Auth.APOP, Pop3Auth.EXTERNAL}))
IMAP_ALL = ImapSettings(auth=frozenset(ImapAuth))


def pop3(settings: Pop3Settings) -> Session:
    engine = Pop3PreAuth(server_config(Protocol.POP3, pop3=settings), tls_active=False, salt=SALT)
    engine.greeting()  # as the session does: a salted greeting shows the client the salt
    return Session(engine)


def imap() -> Session:
    return Session(ImapPreAuth(server_config(Protocol.IMAP, imap=IMAP_ALL), tls_active=False, salt=SALT))


def test_pop3_external_after_a_salted_greeting_carries_the_salt() -> None:
    [login] = credentials(pop3(POP3_SALTED).send(b"AUTH EXTERNAL Ym9i\r\n"))
    assert (login.method, login.login, login.salt) == (AuthMethod.EXTERNAL, b"bob", SALT)


def test_pop3_user_pass_never_carries_the_salt() -> None:
    [login] = credentials(pop3(POP3_SALTED).send(b"USER bob\r\nPASS secret\r\n"))
    assert (login.method, login.salt) == (AuthMethod.PLAIN, None)


def test_pop3_without_apop_or_cram_md5_has_no_salt_to_send() -> None:
    settings = Pop3Settings(auth=frozenset({Pop3Auth.PLAIN, Pop3Auth.EXTERNAL}))
    [login] = credentials(pop3(settings).send(b"AUTH EXTERNAL Ym9i\r\n"))
    assert login.salt is None


def test_imap_external_carries_the_salt_only_after_a_cram_md5_challenge() -> None:
    [first] = credentials(imap().send(b"a1 AUTHENTICATE EXTERNAL Ym9i\r\n"))
    assert first.salt is None
    session = imap()
    challenge = session.send(b"a1 AUTHENTICATE CRAM-MD5\r\n")
    assert challenge and base64.b64encode(SALT) in b"".join(getattr(e, "data", b"") for e in challenge)
    session.send(b"*\r\n")  # not base64: the exchange is abandoned with BAD
    [second] = credentials(session.send(b"a2 AUTHENTICATE EXTERNAL Ym9i\r\n"))
    assert (second.method, second.salt) == (AuthMethod.EXTERNAL, SALT)
