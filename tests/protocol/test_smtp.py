"""SMTP pre-auth engine: nginx's replies, byte for byte (checked against nginx 1.22)."""

from __future__ import annotations

import pytest

from mailgate.config.model import Protocol, SmtpAuth, SmtpSettings, StartTls
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.events import Close, Log, Reply
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.smtp import SmtpPreAuth
from tests.protocol.driver import (
    SALT,
    Session,
    closed,
    credentials,
    every_split,
    logs,
    replies,
    server_config,
)

NONE_ONLY = SmtpSettings(auth=frozenset({SmtpAuth.NONE}))
ALL_METHODS = SmtpSettings(auth=frozenset(SmtpAuth))
INVALID = b"500 5.5.1 Invalid command\r\n"


def session(
    *,
    starttls: StartTls = StartTls.OFF,
    tls_active: bool = False,
    smtp: SmtpSettings | None = None,
    max_errors: int = 5,
) -> Session:
    server = server_config(Protocol.SMTP, starttls=starttls, smtp=smtp, max_errors=max_errors)
    return Session(SmtpPreAuth(server, tls_active=tls_active, salt=SALT))


def test_greeting_names_the_server() -> None:
    assert session().engine.greeting() == b"220 mx.example ESMTP ready\r\n"


def test_fixed_lines_match_nginx() -> None:
    assert SmtpPreAuth.internal_error_line == b"451 4.3.2 Internal server error\r\n"
    assert SmtpPreAuth.cert_error_line == b"421 4.7.1 SSL certificate error\r\n"
    assert SmtpPreAuth.no_cert_line == b"421 4.7.1 No required SSL certificate\r\n"


def test_ehlo_default() -> None:
    assert session().output(b"EHLO client.example.org\r\n") == b"250-mx.example\r\n250 AUTH PLAIN LOGIN\r\n"


def test_ehlo_lists_capabilities_then_auth_in_fixed_order() -> None:
    smtp = SmtpSettings(auth=frozenset(SmtpAuth), capabilities=("PIPELINING", "SIZE 10485760"))
    assert session(smtp=smtp).output(b"ehlo x\r\n") == (
        b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250 AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL\r\n"
    )


def test_ehlo_without_sasl_methods_has_no_auth_line() -> None:
    assert session(smtp=NONE_ONLY).output(b"EHLO x\r\n") == b"250 mx.example\r\n"
    smtp = SmtpSettings(auth=frozenset({SmtpAuth.NONE}), capabilities=("A", "B"))
    assert session(smtp=smtp).output(b"EHLO x\r\n") == b"250-mx.example\r\n250-A\r\n250 B\r\n"


def test_helo_answers_one_line() -> None:
    assert session(smtp=ALL_METHODS).output(b"HELO x\r\n") == b"250 mx.example\r\n"


@pytest.mark.parametrize("line", [b"HELO", b"EHLO", b"EHLO a b", b"HELO  "])
def test_helo_needs_exactly_one_argument(line: bytes) -> None:
    s = session(max_errors=1)
    assert s.output(line + b"\r\n") == b"501 5.5.4 Invalid argument\r\n"
    assert not closed(s.events)


def test_noop_rset_quit() -> None:
    events = session().send(b"NOOP x\r\nRSET\r\nQUIT\r\nNOOP\r\n")
    assert replies(events) == b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"
    assert isinstance(events[-1], Close)


@pytest.mark.parametrize("line", [b"VRFY bob", b"EXPN list", b"HELP", b"STARTTLS"])
def test_refused_commands_are_not_counted(line: bytes) -> None:
    s = session(max_errors=1)
    assert s.output(line + b"\r\n", b"NOOP\r\n") == INVALID + b"250 2.0.0 OK\r\n"


@pytest.mark.parametrize("line", [b"DATA", b"BDAT 10", b"XCLIENT ADDR=1.2.3.4", b"MAILX", b"", b"STARTTLSX"])
def test_unknown_commands_are_syntax_errors(line: bytes) -> None:
    s = session(max_errors=1)
    events = s.send(line + b"\r\n")
    assert replies(events) == INVALID
    assert closed(events)


def test_eleven_arguments_are_allowed_twelve_are_not() -> None:
    assert session().output(b"NOOP 1 2 3 4 5 6 7 8 9 10 11\r\n", b"NOOP 1 2 3 4 5 6 7 8 9 10 11 12\r\n") == (
        b"250 2.0.0 OK\r\n" + INVALID
    )


def test_auth_plain_needs_no_helo_first() -> None:
    events = session().send(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
    assert credentials(events) == [Credentials(Protocol.SMTP, AuthMethod.PLAIN, b"user", b"pass")]


def test_auth_carries_the_helo_name_and_esmtp() -> None:
    [login] = credentials(session().send(b"EHLO client.example.org\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\n"))
    assert (login.smtp_helo, login.smtp_esmtp) == (b"client.example.org", True)


def test_auth_plain_prompt() -> None:
    s = session()
    assert s.output(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert credentials(s.send(b"AHVzZXIAcGFzcw==\r\n"))[0].login == b"user"


def test_auth_login_prompts() -> None:
    s = session()
    assert s.output(b"AUTH LOGIN\r\n", b"dXNlcg==\r\n") == b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
    assert [(c.login, c.password) for c in credentials(s.send(b"cGFzcw==\r\n"))] == [(b"user", b"pass")]
    assert session().output(b"AUTH LOGIN dXNlcg==\r\n") == b"334 UGFzc3dvcmQ6\r\n"


def test_auth_login_accepts_empty_username_and_password() -> None:
    [login] = credentials(session().send(b"AUTH LOGIN\r\n\r\n\r\n"))
    assert (login.login, login.password) == (b"", b"")


def test_auth_cram_md5() -> None:
    s = session(smtp=ALL_METHODS)
    assert s.output(b"AUTH CRAM-MD5\r\n") == b"334 PDE4OTY0MzQ3MjguMTcwMDAwMDAwMEBteC5leGFtcGxlPg==\r\n"
    [login] = credentials(s.send(b"dSAwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==\r\n"))
    assert (login.method, login.login, login.password, login.salt) == (
        AuthMethod.CRAM_MD5,
        b"u",
        b"0123456789abcdef0123456789abcdef",
        SALT,
    )


def test_auth_external() -> None:
    s = session(smtp=ALL_METHODS)
    assert s.output(b"AUTH EXTERNAL\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert [(c.method, c.login) for c in credentials(s.send(b"dXNlcg==\r\n"))] == [
        (AuthMethod.EXTERNAL, b"user")
    ]


def test_auth_without_mechanism_is_an_invalid_argument() -> None:
    assert session().output(b"AUTH\r\nNOOP\r\n") == b"501 5.5.4 Invalid argument\r\n250 2.0.0 OK\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"AUTH XOAUTH2 x",
        b"AUTH CRAM-MD5",
        b"AUTH EXTERNAL",
        b"AUTH EXTERNAL dXNlcg==",
        b"AUTH PLAIN a b",
        b"AUTH LOGIN a b",
    ],
)
def test_unsupported_or_disabled_mechanisms_are_refused(line: bytes) -> None:
    assert session().output(line + b"\r\n") == INVALID


def test_bad_sasl_response_is_refused_and_logged() -> None:
    events = session().send(b"AUTH PLAIN\r\n\r\nNOOP\r\n")
    assert replies(events) == b"334 \r\n" + INVALID + b"250 2.0.0 OK\r\n"
    assert logs(events) == [b"client sent invalid login in AUTH PLAIN command"]


def test_mail_without_auth_none_is_refused_and_logged() -> None:
    events = session().send(b"MAIL FROM:<a@b>\r\n")
    assert replies(events) == b"530 5.7.1 Authentication required\r\n"
    assert logs(events) == [b'client was rejected: "MAIL FROM:<a@b>__"']


def test_refused_mail_does_not_corrupt_pipelined_commands() -> None:
    events = session().send(b"MAIL FROM:<a>\r\nRCPT TO:<b>\r\nQUIT\r\n")
    assert replies(events) == (
        b"530 5.7.1 Authentication required\r\n503 5.5.1 Bad sequence of commands\r\n221 2.0.0 Bye\r\n"
    )
    assert logs(events) == [b'client was rejected: "MAIL FROM:<a>__RCPT TO:<b>__QUIT__"']


def test_submission_with_auth_none() -> None:
    s = session(smtp=NONE_ONLY)
    assert s.output(b"HELO client.example.org\r\n", b"MAIL FROM:<a@example.org>\r\n") == (
        b"250 mx.example\r\n250 2.0.0 OK\r\n"
    )
    events = s.send(b"RCPT TO:<b@example.net>\r\n")
    assert replies(events) == b""
    assert credentials(events) == [
        Credentials(
            Protocol.SMTP,
            AuthMethod.NONE,
            smtp_helo=b"client.example.org",
            smtp_from=b"MAIL FROM:<a@example.org>",
            smtp_to=b"RCPT TO:<b@example.net>",
        )
    ]


def test_mail_and_rcpt_keep_the_command_text_as_typed() -> None:
    [login] = credentials(session(smtp=NONE_ONLY).send(b"mail  FROM:<a>   SIZE=1 \r\nRcPt  To:<b>  X=1 \r\n"))
    assert (login.smtp_from, login.smtp_to) == (b"mail  FROM:<a>   SIZE=1", b"RcPt  To:<b>  X=1")


def test_mail_rcpt_sequence_errors() -> None:
    s = session(smtp=NONE_ONLY)
    assert s.output(
        b"RCPT TO:<b>\r\n", b"MAIL\r\n", b"MAIL FROM:<a>\r\n", b"MAIL FROM:<c>\r\n", b"RCPT\r\n"
    ) == (
        b"503 5.5.1 Bad sequence of commands\r\n"
        b"501 5.5.4 Invalid argument\r\n"
        b"250 2.0.0 OK\r\n"
        b"503 5.5.1 Bad sequence of commands\r\n"
        b"501 5.5.4 Invalid argument\r\n"
    )


@pytest.mark.parametrize("reset", [b"RSET", b"HELO x", b"EHLO x"])
def test_rset_and_helo_forget_the_stored_mail(reset: bytes) -> None:
    s = session(smtp=NONE_ONLY)
    s.send(b"MAIL FROM:<a>\r\n", reset + b"\r\n")
    assert s.output(b"RCPT TO:<b>\r\n") == b"503 5.5.1 Bad sequence of commands\r\n"


def test_starttls_forgets_helo_and_mail_and_discards_pipelined_bytes() -> None:
    s = session(starttls=StartTls.ON, smtp=SmtpSettings(auth=frozenset({SmtpAuth.PLAIN, SmtpAuth.NONE})))
    s.send(b"EHLO before\r\nMAIL FROM:<a>\r\n")
    events = s.send(b"STARTTLS\r\nRCPT TO:<injected>\r\n")
    assert events == [Reply(b"220 2.0.0 Start TLS\r\n"), StartTlsEvent()]
    s.engine.tls_established()
    assert s.output(b"RCPT TO:<b>\r\n") == b"503 5.5.1 Bad sequence of commands\r\n"
    [login] = credentials(s.send(b"AUTH PLAIN AHUAcA==\r\n"))
    assert login.smtp_helo == b""


def test_starttls_only_refuses_auth_but_not_auth_none_submission() -> None:
    s = session(starttls=StartTls.ONLY, smtp=SmtpSettings(auth=frozenset({SmtpAuth.PLAIN, SmtpAuth.NONE})))
    assert s.output(b"AUTH PLAIN AHUAcA==\r\n", b"AUTH\r\n", b"MAIL FROM:<a>\r\n") == (
        INVALID + INVALID + b"250 2.0.0 OK\r\n"
    )
    assert credentials(s.send(b"RCPT TO:<b>\r\n"))[0].method is AuthMethod.NONE


def test_rejection_uses_the_auth_error_code_or_535() -> None:
    s = session()
    s.send(b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\n")
    assert s.reject(b"Temporary server problem, try again later", b"451 4.3.0") == (
        b"451 4.3.0 Temporary server problem, try again later\r\n"
    )
    [login] = credentials(s.send(b"AUTH PLAIN AHUAcA==\r\n"))
    assert (login.smtp_helo, login.smtp_esmtp) == (b"x", True)
    assert s.reject(b"Invalid login") == b"535 5.7.0 Invalid login\r\n"


def test_rejected_submission_keeps_mail_for_another_rcpt() -> None:
    s = session(smtp=NONE_ONLY)
    s.send(b"MAIL FROM:<a>\r\nRCPT TO:<b>\r\n")
    s.reject()
    assert credentials(s.send(b"RCPT TO:<c>\r\n"))[0].smtp_from == b"MAIL FROM:<a>"


def test_talking_before_the_delayed_greeting_is_refused() -> None:
    engine = SmtpPreAuth(server_config(Protocol.SMTP), tls_active=False)
    refusal = engine.rejected_before_greeting(b"EHLO x\r\n")
    assert refusal == b"503 5.5.0 Improper use of SMTP command pipelining\r\n"
    events = Session(engine).drain()
    assert events[0] == Log(
        "info",
        'client was rejected before greeting: "EHLO x__"',
        b'client was rejected before greeting: "EHLO x__"',
    )
    assert isinstance(events[-1], Close)


def test_too_long_command() -> None:
    events = session(smtp=SmtpSettings(client_buffer=64)).send(b"NOOP\r\n" * 12 + b"NOOP x\r\n")
    assert replies(events) == b"250 2.0.0 OK\r\n" * 10 + INVALID
    assert logs(events) == [b'client sent too long command "' + b"NOOP\r\n" * 10 + b'NOOP"']
    assert closed(events)


def test_fifth_syntax_error_closes() -> None:
    s = session()
    assert not closed(s.send(b"DATA\r\n" * 4))
    assert closed(s.send(b"DATA\r\n"))


AUTH_LOGIN = b"EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nMAIL FROM:<a>\r\n"


@pytest.mark.parametrize("chunks", list(every_split(AUTH_LOGIN)))
def test_auth_login_parses_the_same_at_every_split(chunks: tuple[bytes, ...]) -> None:
    s = session()
    events = s.send(*chunks)
    assert (
        replies(events)
        == b"250-mx.example\r\n250 AUTH PLAIN LOGIN\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
    )
    assert [(c.login, c.password) for c in credentials(events)] == [(b"user", b"pass")]
    assert s.engine.take_unconsumed() == b"MAIL FROM:<a>\r\n"
