"""POP3 pre-auth engine: nginx's replies, byte for byte (checked against nginx 1.22)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailgate.config.model import Pop3Auth, Pop3Settings, Protocol, StartTls
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.events import Close, Reply
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.pop3 import Pop3PreAuth
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

DEFAULT_CAPA = b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\n.\r\n"
ALL_METHODS = Pop3Settings(auth=frozenset(Pop3Auth))


def session(
    *,
    starttls: StartTls = StartTls.OFF,
    tls_active: bool = False,
    pop3: Pop3Settings | None = None,
    salt: bytes | None = SALT,
) -> Session:
    server = server_config(Protocol.POP3, starttls=starttls, pop3=pop3)
    return Session(Pop3PreAuth(server, tls_active=tls_active, salt=salt))


def test_greeting_without_apop_or_cram_md5_has_no_salt() -> None:
    assert session().engine.greeting() == b"+OK POP3 ready\r\n"


@pytest.mark.parametrize("method", [Pop3Auth.APOP, Pop3Auth.CRAM_MD5])
def test_greeting_carries_the_salt_when_apop_or_cram_md5_is_enabled(method: Pop3Auth) -> None:
    engine = session(pop3=Pop3Settings(auth=frozenset({method}))).engine
    assert engine.greeting() == b"+OK POP3 ready " + SALT + b"\r\n"


def test_greeting_makes_a_salt_when_the_caller_gave_none() -> None:
    greeting = session(pop3=Pop3Settings(auth=frozenset({Pop3Auth.APOP})), salt=None).engine.greeting()
    assert greeting.startswith(b"+OK POP3 ready <") and greeting.endswith(b"@mx.example>\r\n")


def test_fixed_lines_match_nginx() -> None:
    assert Pop3PreAuth.internal_error_line == b"-ERR internal server error\r\n"
    assert Pop3PreAuth.cert_error_line == b"-ERR SSL certificate error\r\n"
    assert Pop3PreAuth.no_cert_line == b"-ERR No required SSL certificate\r\n"


def test_capa_default() -> None:
    assert session().output(b"CAPA\r\n") == DEFAULT_CAPA


def test_capa_lists_sasl_mechanisms_in_fixed_order_and_never_apop() -> None:
    assert session(pop3=ALL_METHODS).output(b"capa\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN CRAM-MD5 EXTERNAL\r\n.\r\n"
    )


def test_capa_keeps_a_bare_sasl_line_with_apop_only() -> None:
    pop3 = Pop3Settings(auth=frozenset({Pop3Auth.APOP}), capabilities=("TOP",))
    assert session(pop3=pop3).output(b"CAPA\r\n") == b"+OK Capability list follows\r\nTOP\r\nSASL\r\n.\r\n"


def test_auth_without_argument_lists_methods() -> None:
    assert session().output(b"AUTH\r\n") == b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert session(pop3=ALL_METHODS).output(b"AUTH\r\n") == (
        b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\nEXTERNAL\r\n.\r\n"
    )
    assert session(pop3=Pop3Settings(auth=frozenset({Pop3Auth.APOP}))).output(b"AUTH\r\n") == (
        b"+OK methods supported:\r\n.\r\n"
    )


def test_noop_and_quit() -> None:
    events = session().send(b"NOOP\r\nQUIT\r\nNOOP\r\n")
    assert replies(events) == b"+OK\r\n+OK\r\n"
    assert isinstance(events[-1], Close)


@pytest.mark.parametrize(
    "line", [b"STAT", b"LIST", b"RETR 1", b"TOP 1 1", b"UIDL", b"USERX bob", b"USE", b"", b"NO OP"]
)
def test_other_commands_are_invalid(line: bytes) -> None:
    assert session().output(line + b"\r\n") == b"-ERR invalid command\r\n"


def test_user_then_pass() -> None:
    s = session()
    assert s.output(b"USER bob\r\n") == b"+OK\r\n"
    assert credentials(s.send(b"PASS secret\r\n")) == [
        Credentials(Protocol.POP3, AuthMethod.PLAIN, b"bob", b"secret")
    ]


def test_user_and_pass_keep_inner_and_trailing_spaces() -> None:
    [login] = credentials(session().send(b"USER  a b  \r\nPASS   my secret \r\n"))
    assert (login.login, login.password) == (b"a b  ", b"my secret ")


@pytest.mark.parametrize("line", [b"PASS x", b"USER", b"USER \r\nPASS x"])
def test_pass_needs_a_user_first(line: bytes) -> None:
    events = session().send(line + b"\r\n")
    assert not credentials(events)
    assert replies(events).endswith(b"-ERR invalid command\r\n")


@pytest.mark.parametrize("command", [b"USER b", b"APOP a b", b"AUTH", b"AUTH PLAIN", b"STLS", b"STAT"])
def test_commands_after_user_reset_to_start(command: bytes) -> None:
    s = session(pop3=Pop3Settings(auth=frozenset({Pop3Auth.PLAIN, Pop3Auth.APOP})), starttls=StartTls.ON)
    assert s.output(b"USER a\r\n", command + b"\r\n", b"PASS x\r\n") == (
        b"+OK\r\n-ERR invalid command\r\n-ERR invalid command\r\n"
    )


def test_capa_after_user_never_offers_stls() -> None:
    s = session(starttls=StartTls.ON)
    assert s.output(b"USER a\r\n", b"CAPA\r\n", b"NOOP\r\n") == b"+OK\r\n" + DEFAULT_CAPA + b"+OK\r\n"
    assert len(credentials(s.send(b"PASS x\r\n"))) == 1


def test_apop() -> None:
    digest = b"0123456789abcdef0123456789abcdef"
    events = session(pop3=Pop3Settings(auth=frozenset({Pop3Auth.APOP}))).send(b"APOP bob " + digest + b"\r\n")
    assert credentials(events) == [Credentials(Protocol.POP3, AuthMethod.APOP, b"bob", digest, salt=SALT)]


@pytest.mark.parametrize("line", [b"APOP bob", b"APOP a b c"])
def test_apop_needs_two_arguments(line: bytes) -> None:
    s = session(pop3=Pop3Settings(auth=frozenset({Pop3Auth.APOP})))
    assert s.output(line + b"\r\n") == b"-ERR invalid command\r\n"


def test_apop_needs_apop_enabled() -> None:
    assert session().output(b"APOP bob 0123\r\n") == b"-ERR invalid command\r\n"


def test_at_most_three_arguments() -> None:
    assert (
        session().output(b"CAPA x y z\r\n", b"CAPA a b c d\r\n") == DEFAULT_CAPA + b"-ERR invalid command\r\n"
    )


def test_auth_plain_with_and_without_initial_response() -> None:
    s = session()
    assert credentials(s.send(b"AUTH PLAIN AGJvYgBwdw==\r\n"))[0].login == b"bob"
    s = session()
    assert s.output(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert credentials(s.send(b"AGJvYgBwdw==\r\n"))[0].password == b"pw"


def test_auth_login_with_and_without_initial_username() -> None:
    s = session()
    assert s.output(b"AUTH LOGIN\r\n", b"Ym9i extra\r\n") == b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"
    assert [(c.method, c.login, c.password) for c in credentials(s.send(b"cHc=\r\n"))] == [
        (AuthMethod.PLAIN, b"bob", b"pw")
    ]
    s = session()
    assert s.output(b"AUTH LOGIN Ym9i\r\n") == b"+ UGFzc3dvcmQ6\r\n"


def test_auth_cram_md5_uses_the_greeting_salt() -> None:
    s = session(pop3=ALL_METHODS)
    assert s.output(b"AUTH CRAM-MD5\r\n") == b"+ PDE4OTY0MzQ3MjguMTcwMDAwMDAwMEBteC5leGFtcGxlPg==\r\n"
    [login] = credentials(s.send(b"Ym9iIDAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm\r\n"))
    assert (login.method, login.login, login.salt) == (AuthMethod.CRAM_MD5, b"bob", SALT)


def test_auth_external() -> None:
    s = session(pop3=ALL_METHODS)
    assert s.output(b"AUTH EXTERNAL\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert credentials(s.send(b"Ym9i\r\n")) == [Credentials(Protocol.POP3, AuthMethod.EXTERNAL, b"bob")]


@pytest.mark.parametrize(
    ("line", "log"),
    [
        (b"AUTH PLAIN YWI=", b"client sent invalid login in AUTH PLAIN command"),
        (b"AUTH PLAIN AGE=", b"client sent invalid password in AUTH PLAIN command"),
        (b"AUTH PLAIN !", b"client sent invalid base64 encoding in AUTH PLAIN command"),
        (b"AUTH PLAIN a b", None),
        (b"AUTH CRAM-MD5", None),
        (b"AUTH EXTERNAL Ym9i", None),
        (b"AUTH XOAUTH2 abc", None),
    ],
)
def test_bad_auth_is_refused_with_nginx_log(line: bytes, log: bytes | None) -> None:
    events = session().send(line + b"\r\n")
    assert replies(events) == b"-ERR invalid command\r\n"
    assert logs(events) == ([log] if log else [])


def test_buffer_is_128_bytes_whatever_the_configuration() -> None:
    events = session().send(b"USER " + b"x" * 130)
    assert replies(events) == b"-ERR invalid command\r\n"
    assert logs(events) == [b'client sent too long command "USER ' + b"x" * 123 + b'"']
    assert closed(events)


def test_long_auth_plain_initial_response_is_too_long() -> None:
    assert closed(session().send(b"AUTH PLAIN " + b"A" * 120 + b"\r\n"))


def test_partial_command_behind_pipelined_ones_overflows_the_uncompacted_buffer() -> None:
    events = session().send(b"NOOP\r\n" * 21 + b"NOOP")
    assert replies(events) == b"+OK\r\n" * 21 + b"-ERR invalid command\r\n"
    assert closed(events)


def test_pipelined_commands_filling_the_buffer_exactly_are_answered() -> None:
    s = session()
    assert (
        s.output(b"NOOP\r\n" * 21 + b"\r\n", b"NOOP\r\n")
        == b"+OK\r\n" * 21 + b"-ERR invalid command\r\n+OK\r\n"
    )
    assert not closed(s.events)


def test_fifth_syntax_error_closes() -> None:
    s = session()
    assert not closed(s.send(b"x\r\n" * 4))
    events = s.send(b"x\r\n")
    assert logs(events) == [b"client sent too many invalid commands"]
    assert isinstance(events[-1], Close)


def test_semantic_errors_are_not_counted() -> None:
    s = session()
    s.send(b"PASS x\r\n" * 10, b"APOP a b\r\n" * 10)
    assert not closed(s.events)


USER_PASS = b"USER bob\r\nPASS a secret\r\nLIST\r\n"


@pytest.mark.parametrize("chunks", list(every_split(USER_PASS)))
def test_user_pass_parse_the_same_at_every_split(chunks: tuple[bytes, ...]) -> None:
    s = session()
    events = s.send(*chunks)
    assert replies(events) == b"+OK\r\n"
    assert [(c.login, c.password) for c in credentials(events)] == [(b"bob", b"a secret")]
    assert s.engine.take_unconsumed() == b"LIST\r\n"


def test_stls_replies_then_hands_over_and_discards_pipelined_bytes() -> None:
    s = session(starttls=StartTls.ON)
    events = s.send(b"STLS\r\nUSER injected\r\nPASS x\r\n")
    assert events == [Reply(b"+OK\r\n"), StartTlsEvent()]
    s.engine.tls_established()
    assert s.output(b"CAPA\r\n") == DEFAULT_CAPA
    assert not credentials(s.events)


def test_stls_refused_without_starttls_or_over_tls() -> None:
    assert session().output(b"STLS\r\n") == b"-ERR invalid command\r\n"
    assert session(starttls=StartTls.ON, tls_active=True).output(b"STLS\r\n") == b"-ERR invalid command\r\n"


def test_starttls_only_refuses_user_apop_and_auth_before_tls() -> None:
    pop3 = Pop3Settings(auth=frozenset({Pop3Auth.PLAIN, Pop3Auth.APOP}))
    s = session(starttls=StartTls.ONLY, pop3=pop3)
    events = s.send(b"USER a\r\nAUTH\r\nAUTH PLAIN\r\nAPOP a b\r\nPASS x\r\nNOOP\r\n")
    assert replies(events) == b"-ERR invalid command\r\n" * 5 + b"+OK\r\n"
    assert not credentials(events)


def test_rejection_is_an_err_line_and_forgets_user() -> None:
    s = session()
    s.send(b"USER a\r\nPASS b\r\nPASS c\r\nUSER d\r\n")
    assert s.reject(b"Invalid login or password") == (
        b"-ERR Invalid login or password\r\n-ERR invalid command\r\n+OK\r\n"
    )


@pytest.mark.parametrize("decoded", [b"\x00bob\r\nDELE 1\x00pw", b"\x00bob\x00pw\nQUIT"])
def test_auth_plain_with_a_line_break_in_login_or_password_is_refused(decoded: bytes) -> None:
    # The backend login would send it inside `USER ...\r\n`/`PASS ...\r\n`: a command injection.
    events = session().send(b"AUTH PLAIN " + base64.b64encode(decoded) + b"\r\n")
    assert replies(events) == b"-ERR invalid command\r\n"
    assert credentials(events) == []


_VERB_LINES = st.builds(
    lambda verb, arguments, end: verb + b"".join(arguments) + end,
    st.sampled_from(
        [b"USER", b"pass", b"QUIT", b"capa", b"EHLO", b"MAIL", b"RCPT", b"AUTH", b"X1", b"", b"NOPE"]
    ),
    st.lists(
        st.tuples(
            st.sampled_from([b" ", b" ", b"  ", b"", b"\t"]),
            st.sampled_from([b"bob", b"a b", b"FROM:<x@y>", b" ", b"\x00", b"x" * 20, b"\t"]),
        ).map(b"".join),
        max_size=13,
    ),
    st.sampled_from([b"\r\n", b"\n", b"  \r\n", b"\r", b"", b"\rx\n"]),
)


@given(_VERB_LINES)
@example(b"USER  bob smith  \r\n")
@example(b"RETR 1 2 3 4\r\n")
@example(b"MAIL FROM:<a@b>  SIZE=10 \r\n")
@example(b"AUTH PLAIN\r\n")
@example(b"QUIT\tx\r\n")
def test_command_lines_read_by_expression_give_what_the_state_machine_gives(line: bytes) -> None:
    from mailgate.protocol import pop3, smtp
    from mailgate.protocol.engine import VerbParser
    from tests.protocol.driver import parsed_both_ways

    parsers: list[Callable[[], VerbParser[Any]]] = [
        lambda: VerbParser(
            pop3._VERBS,
            max_arguments=pop3._MAX_ARGUMENTS,
            continued_by=pop3.Pop3Command.AUTH,
            keeps_spaces=pop3._KEEPS_SPACES,
        ),
        lambda: VerbParser(
            smtp._VERBS, max_arguments=smtp._MAX_ARGUMENTS, continued_by=smtp.SmtpCommand.AUTH
        ),
    ]
    for make in parsers:
        fast, by_state = parsed_both_ways(
            make,
            line,
            lambda parser, buffer: (parser.command, parser.args, parser.state, parser.command_text(buffer)),
        )
        assert fast == by_state
