"""IMAP pre-auth engine: nginx's replies, byte for byte (checked against nginx 1.22 where it agrees)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailgate.config.model import ImapAuth, ImapSettings, Protocol, StartTls
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.events import Authenticate, Close, Log, NeedData, Reply
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.imap import ImapPreAuth
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

ALL_METHODS = ImapSettings(auth=frozenset(ImapAuth))


def session(
    *,
    starttls: StartTls = StartTls.OFF,
    tls_active: bool = False,
    imap: ImapSettings | None = None,
    max_errors: int = 5,
) -> Session:
    server = server_config(Protocol.IMAP, starttls=starttls, imap=imap, max_errors=max_errors)
    return Session(ImapPreAuth(server, tls_active=tls_active, salt=SALT))


def only_login(data: bytes, *, imap: ImapSettings | None = None) -> Credentials:
    [login] = credentials(session(imap=imap).send(data))
    return login


def test_greeting_is_fixed() -> None:
    assert session().engine.greeting() == b"* OK IMAP4 ready\r\n"


def test_fixed_lines_match_nginx() -> None:
    assert ImapPreAuth.internal_error_line == b"* BAD internal server error\r\n"
    assert ImapPreAuth.cert_error_line == b"* BYE SSL certificate error\r\n"
    assert ImapPreAuth.no_cert_line == b"* BYE No required SSL certificate\r\n"


def test_capability_lists_capabilities_then_auth_methods() -> None:
    assert session().output(b"a1 CAPABILITY\r\n") == (
        b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN\r\na1 OK completed\r\n"
    )


def test_capability_orders_auth_methods_as_nginx_whatever_the_configuration() -> None:
    imap = ImapSettings(
        auth=frozenset({ImapAuth.EXTERNAL, ImapAuth.CRAM_MD5, ImapAuth.LOGIN}), capabilities=("X",)
    )
    assert session(imap=imap).output(b"a CAPABILITY\r\n") == (
        b"* CAPABILITY X AUTH=LOGIN AUTH=CRAM-MD5 AUTH=EXTERNAL\r\na OK completed\r\n"
    )


def test_capability_ignores_arguments() -> None:
    assert session().output(b"a capability x y z\r\n").endswith(b"a OK completed\r\n")


def test_noop_answers_ok_completed() -> None:
    assert session().output(b"tag NOOP\r\n") == b"tag OK completed\r\n"


def test_logout_says_bye_then_closes() -> None:
    events = session().send(b"a LOGOUT\r\nb NOOP\r\n")
    assert replies(events) == b"* BYE\r\na OK completed\r\n"
    assert isinstance(events[-1], Close)


def test_commands_are_case_insensitive() -> None:
    assert session().output(b"a nOoP\r\nb logOUT\r\n") == b"a OK completed\r\n* BYE\r\nb OK completed\r\n"


@pytest.mark.parametrize("command", [b"SELECT INBOX", b"ID NIL", b"ENABLE X", b"NOOPS", b"NOOP1", b"NO-OP"])
def test_other_commands_are_invalid(command: bytes) -> None:
    assert session().output(b"a " + command + b"\r\n") == b"a BAD invalid command\r\n"


# --- tags


def test_tag_may_use_letters_digits_dash_dot_underscore() -> None:
    assert session().output(b"aZ09-._ NOOP\r\n") == b"aZ09-._ OK completed\r\n"


def test_tag_of_32_characters_is_accepted_and_33_is_not() -> None:
    out = session().output(b"a" * 32 + b" NOOP\r\n", b"a" * 33 + b" NOOP\r\n")
    assert out == b"a" * 32 + b" OK completed\r\n* BAD invalid command\r\n"


@pytest.mark.parametrize(
    "line", [b"* NOOP", b"+ NOOP", b"a+b NOOP", b"a", b"", b" NOOP", b"\tNOOP", b"a\x00 NOOP"]
)
def test_invalid_or_missing_tag_gets_an_untagged_bad(line: bytes) -> None:
    assert session().output(line + b"\r\n") == b"* BAD invalid command\r\n"


def test_error_after_a_valid_tag_is_tagged() -> None:
    assert (
        session().output(b"a \r\n", b"b NOOP\tx\r\n") == b"a BAD invalid command\r\nb BAD invalid command\r\n"
    )


def test_spaces_between_tag_and_command_are_skipped() -> None:
    assert session().output(b"a    NOOP\r\n") == b"a OK completed\r\n"


# --- line endings


def test_bare_lf_ends_a_line() -> None:
    assert session().output(b"a NOOP\nb NOOP x\n") == b"a OK completed\r\nb OK completed\r\n"


def test_cr_not_followed_by_lf_makes_the_line_invalid() -> None:
    assert session().output(b"a NOOP\rX\r\nb NOOP\r\n") == b"a BAD invalid command\r\nb OK completed\r\n"


def test_empty_lines_are_invalid() -> None:
    assert session().output(b"\r\n\n") == b"* BAD invalid command\r\n* BAD invalid command\r\n"


def test_invalid_line_is_answered_only_once_its_end_arrived() -> None:
    s = session()
    assert s.output(b"a FOO bar") == b""
    assert s.output(b" baz\r\n") == b"a BAD invalid command\r\n"


# --- arguments


def test_login_with_atoms() -> None:
    login = only_login(b"a1 LOGIN bob secret\r\n")
    assert login == Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"bob", b"secret", imap_tag=b"a1")


def test_atom_keeps_quotes_backslashes_and_braces() -> None:
    login = only_login(b'a LOGIN a"b\\c x{1}\r\n')
    assert (login.login, login.password) == (b'a"b\\c', b"x{1}")


def test_quoted_strings_keep_spaces_and_drop_escaping_backslashes() -> None:
    login = only_login(b'a LOGIN "u\\"s" "p a\\\\ss"\r\n')
    assert (login.login, login.password) == (b'u"s', b"p a\\ss")


def test_quoted_string_may_be_empty_for_the_password() -> None:
    assert only_login(b'a LOGIN "bob" ""\r\n').password == b""


def test_closing_quote_ends_the_argument_like_a_space() -> None:
    login = only_login(b'a LOGIN "bob"secret\r\n')
    assert (login.login, login.password) == (b"bob", b"secret")


def test_backslash_before_line_end_in_a_quoted_string_is_invalid() -> None:
    assert session().output(b'a LOGIN "bob\\\r\n') == b"a BAD invalid command\r\n"


def test_unterminated_quoted_string_ends_at_the_line_end_without_leaking_into_the_next_command() -> None:
    s = session()
    assert s.output(b'a NOOP "abc\r\n') == b"a OK completed\r\n"
    [login] = credentials(s.send(b"b LOGIN x y\r\n"))
    assert (login.login, login.password) == (b"x", b"y")


def test_at_most_three_arguments() -> None:
    assert session().output(b"a NOOP x y z\r\n", b"a NOOP x y z w\r\n") == (
        b"a OK completed\r\na BAD invalid command\r\n"
    )


def test_fourth_argument_cannot_be_a_literal_or_quoted_string() -> None:
    s = session()
    assert s.output(b"a LOGIN a b c {1}\r\n", b'b LOGIN a b c "d"\r\n') == (
        b"a BAD invalid command\r\nb BAD invalid command\r\n"
    )


@pytest.mark.parametrize("line", [b"a LOGIN bob", b"a LOGIN a b c", b'a LOGIN "" pw', b"a LOGIN"])
def test_login_needs_exactly_two_arguments_and_a_user(line: bytes) -> None:
    events = session().send(line + b"\r\n")
    assert replies(events) == b"a BAD invalid command\r\n"
    assert not credentials(events)


def test_login_refused_is_not_counted_toward_max_errors() -> None:
    s = session(max_errors=2)
    assert s.output(b"a LOGIN x\r\n" * 5) == b"a BAD invalid command\r\n" * 5
    assert not closed(s.events)


# --- literals


def test_synchronizing_literal_gets_a_continuation() -> None:
    s = session()
    assert s.output(b"a2 LOGIN {4}\r\n") == b"+ OK\r\n"
    events = s.send(b'user "pa ss"\r\n')
    assert credentials(events) == [
        Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"user", b"pa ss", imap_tag=b"a2")
    ]


def test_non_synchronizing_literal_gets_no_continuation() -> None:
    events = session().send(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n")
    assert replies(events) == b""
    assert [(c.login, c.password) for c in credentials(events)] == [(b"bob", b"pw")]


def test_literal_bytes_are_taken_verbatim() -> None:
    login = only_login(b'a LOGIN {7}\r\n\r\n \x00"\\{ pw\r\n')
    assert login.login == b'\r\n \x00"\\{'


def test_literal_may_end_with_lf_only() -> None:
    events = session().send(b"a LOGIN {1}\nx y\n")
    assert replies(events) == b"+ OK\r\n"
    assert [(c.login, c.password) for c in credentials(events)] == [(b"x", b"y")]


def test_zero_length_literal_is_an_empty_string() -> None:
    events = session().send(b"a LOGIN bob {0}\r\n\r\n")
    assert replies(events) == b"+ OK\r\n"
    assert [(c.login, c.password) for c in credentials(events)] == [(b"bob", b"")]


@pytest.mark.parametrize(
    "literal", [b"{}", b"{+}", b"{1x}", b"{1++}", b"{-1}", b"{1}x", b"{18446744073709551616}"]
)
def test_malformed_literal_is_a_syntax_error(literal: bytes) -> None:
    assert session().output(b"a LOGIN " + literal + b"\r\n") == b"a BAD invalid command\r\n"


def test_largest_literal_length_is_not_an_overflow() -> None:
    assert session().output(b"a LOGIN {18446744073709551615}\r\n") == b"+ OK\r\n"


def test_literal_must_be_followed_by_space_or_line_end() -> None:
    s = session()
    assert s.output(b"a LOGIN {1}\r\n", b"xY\r\n") == b"+ OK\r\na BAD invalid command\r\n"


def test_invalid_line_announcing_a_non_synchronizing_literal_closes_the_connection() -> None:
    events = session().send(b"a FOO {3+}\r\nabc\r\n")
    assert replies(events) == b"a BAD invalid command\r\n"
    assert isinstance(events[-1], Close)


def test_invalid_line_ending_in_plus_brace_closes_even_without_a_literal() -> None:
    assert closed(session().send(b"x a+}\r\n"))


def test_invalid_line_with_synchronizing_literal_does_not_close() -> None:
    s = session()
    assert s.output(b"a FOO {3}\r\n", b"b NOOP\r\n") == b"a BAD invalid command\r\nb OK completed\r\n"
    assert not closed(s.events)


LITERAL_LOGIN = b"a1 LOGIN {3}\r\nbob {5+}\r\np w\r\n\r\nb2 NOOP\r\n"


@pytest.mark.parametrize("chunks", list(every_split(LITERAL_LOGIN)))
def test_literals_parse_the_same_at_every_split(chunks: tuple[bytes, ...]) -> None:
    s = session()
    events = s.send(*chunks)
    assert replies(events) == b"+ OK\r\n"
    assert [(c.login, c.password, c.imap_tag) for c in credentials(events)] == [(b"bob", b"p w\r\n", b"a1")]
    assert s.engine.take_unconsumed() == b"b2 NOOP\r\n"


# --- AUTHENTICATE


def test_authenticate_plain_with_initial_response() -> None:
    login = only_login(b"t AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n")
    assert login == Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"bob", b"secret", imap_tag=b"t")


def test_authenticate_plain_prompts_with_an_empty_continuation() -> None:
    s = session()
    assert s.output(b"t AUTHENTICATE plain\r\n") == b"+ \r\n"
    [login] = credentials(s.send(b"AGJvYgBzZWNyZXQ=\r\n"))
    assert (login.login, login.password, login.imap_tag) == (b"bob", b"secret", b"t")


def test_authenticate_login_prompts_for_username_then_password() -> None:
    s = session()
    assert s.output(b"t AUTHENTICATE LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert s.output(b"Ym9i\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    [login] = credentials(s.send(b"c2VjcmV0\r\n"))
    assert (login.method, login.login, login.password) == (AuthMethod.PLAIN, b"bob", b"secret")


def test_authenticate_login_with_initial_username_prompts_for_password() -> None:
    s = session()
    assert s.output(b"t AUTHENTICATE LOGIN Ym9i\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert [(c.login, c.password) for c in credentials(s.send(b"c2VjcmV0\r\n"))] == [(b"bob", b"secret")]


def test_authenticate_cram_md5_challenge_is_the_base64_salt() -> None:
    s = session(imap=ALL_METHODS)
    assert s.output(b"t AUTHENTICATE CRAM-MD5\r\n") == (
        b"+ PDE4OTY0MzQ3MjguMTcwMDAwMDAwMEBteC5leGFtcGxlPg==\r\n"
    )
    digest = b"0123456789abcdef0123456789abcdef"
    [login] = credentials(s.send(b"Ym9iIDAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm\r\n"))
    assert login == Credentials(Protocol.IMAP, AuthMethod.CRAM_MD5, b"bob", digest, salt=SALT, imap_tag=b"t")


def test_authenticate_cram_md5_makes_a_salt_when_none_was_given() -> None:
    server = server_config(Protocol.IMAP, imap=ALL_METHODS)
    s = Session(ImapPreAuth(server, tls_active=False))
    prompt = s.output(b"t AUTHENTICATE CRAM-MD5\r\n")
    assert prompt.startswith(b"+ ") and prompt.endswith(b"\r\n")


def test_authenticate_external_prompts_for_a_username() -> None:
    s = session(imap=ALL_METHODS)
    assert s.output(b"t AUTHENTICATE EXTERNAL\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert credentials(s.send(b"\r\n")) == [Credentials(Protocol.IMAP, AuthMethod.EXTERNAL, imap_tag=b"t")]


def test_authenticate_external_with_initial_response() -> None:
    login = only_login(b"t AUTHENTICATE EXTERNAL Ym9i\r\n", imap=ALL_METHODS)
    assert (login.method, login.login, login.password) == (AuthMethod.EXTERNAL, b"bob", b"")


@pytest.mark.parametrize(
    "line",
    [b"AUTHENTICATE CRAM-MD5", b"AUTHENTICATE EXTERNAL", b"AUTHENTICATE EXTERNAL Ym9i", b"AUTHENTICATE"],
)
def test_disabled_or_missing_mechanism_is_refused(line: bytes) -> None:
    events = session().send(b"t " + line + b"\r\n")
    assert replies(events) == b"t BAD invalid command\r\n"
    assert not credentials(events)


@pytest.mark.parametrize(
    "line",
    [
        b"AUTHENTICATE XOAUTH2 abc",
        b"AUTHENTICATE PLAIN a b",
        b"AUTHENTICATE LOGIN a b",
        b"AUTHENTICATE CRAM-MD5 x",
    ],
)
def test_unknown_mechanism_or_extra_arguments_are_refused(line: bytes) -> None:
    assert session(imap=ALL_METHODS).output(b"t " + line + b"\r\n") == b"t BAD invalid command\r\n"


def test_star_cancels_the_exchange_with_a_tagged_bad() -> None:
    s = session()
    events = s.send(b"t AUTHENTICATE PLAIN\r\n", b"*\r\n", b"u NOOP\r\n")
    assert replies(events) == b"+ \r\nt BAD invalid command\r\nu OK completed\r\n"
    assert logs(events) == [b"client sent invalid base64 encoding in AUTH PLAIN command"]


def test_bad_base64_username_gets_a_tagged_bad() -> None:
    s = session()
    events = s.send(b"t AUTHENTICATE LOGIN\r\n", b"!!!\r\n")
    assert replies(events) == b"+ VXNlcm5hbWU6\r\nt BAD invalid command\r\n"
    assert logs(events) == [b"client sent invalid base64 encoding in AUTH LOGIN command"]


def test_continuation_line_uses_its_first_token() -> None:
    [login] = credentials(session().send(b"t AUTHENTICATE PLAIN\r\nAGJvYgBzZWNyZXQ= ignored\r\n"))
    assert login.login == b"bob"


def test_continuation_line_with_four_tokens_is_a_syntax_error() -> None:
    assert session().output(b"t AUTHENTICATE PLAIN\r\n", b"a b c d\r\n") == b"+ \r\nt BAD invalid command\r\n"


def test_commands_inside_an_exchange_are_continuation_data() -> None:
    s = session()
    events = s.send(b"t AUTHENTICATE LOGIN\r\n", b"NOOP LOGOUT\r\n")
    assert replies(events) == b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"
    assert not closed(events)


# --- STARTTLS and `starttls only`


def test_starttls_replies_ok_then_asks_for_the_handshake() -> None:
    events = session(starttls=StartTls.ON).send(b"a STARTTLS\r\n")
    assert events == [Reply(b"a OK completed\r\n"), StartTlsEvent()]


def test_starttls_discards_pipelined_commands() -> None:
    s = session(starttls=StartTls.ON)
    events = s.send(b"a STARTTLS\r\nb LOGIN injected x\r\n")
    assert events == [Reply(b"a OK completed\r\n"), StartTlsEvent()]
    assert isinstance(s.engine.next_event(), NeedData)
    s.engine.tls_established()
    events = s.send(b"c NOOP\r\n")
    assert replies(events) == b"c OK completed\r\n"
    assert not credentials(s.events)


def test_starttls_without_tls_configured_is_refused_but_not_counted() -> None:
    s = session(max_errors=1)
    assert s.output(b"a STARTTLS\r\nb NOOP\r\n") == b"a BAD invalid command\r\nb OK completed\r\n"


def test_starttls_over_tls_is_refused() -> None:
    s = session(starttls=StartTls.ON)
    s.send(b"a STARTTLS\r\n")
    s.engine.tls_established()
    assert s.output(b"b STARTTLS\r\n") == b"b BAD invalid command\r\n"


def test_starttls_only_refuses_login_and_authenticate_before_tls() -> None:
    s = session(starttls=StartTls.ONLY)
    events = s.send(b"a LOGIN u p\r\nb AUTHENTICATE PLAIN AHUAcA==\r\nc NOOP\r\n")
    assert replies(events) == b"a BAD invalid command\r\nb BAD invalid command\r\nc OK completed\r\n"
    assert not credentials(events)


def test_starttls_only_allows_login_after_tls() -> None:
    s = session(starttls=StartTls.ONLY)
    s.send(b"1 STARTTLS\r\n")
    s.engine.tls_established()
    assert (
        s.output(b"2 CAPABILITY\r\n")
        == b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN\r\n2 OK completed\r\n"
    )
    assert len(credentials(s.send(b"3 LOGIN u p\r\n"))) == 1


# --- errors, buffer, pipelining


def test_fifth_syntax_error_is_answered_then_closes() -> None:
    s = session()
    events = s.send(b"x\r\n" * 4)
    assert not closed(events)
    events = s.send(b"x\r\n")
    assert events == [
        Log("info", "client sent too many invalid commands", b"client sent too many invalid commands"),
        Reply(b"* BAD invalid command\r\n"),
        Close("too many invalid commands"),
    ]


def test_semantic_errors_do_not_count_toward_max_errors() -> None:
    s = session()
    s.send(b"x\r\n", b"a LOGIN x\r\n", b"a STARTTLS\r\n", b"y\r\n", b"y\r\n", b"y\r\n")
    assert not closed(s.events)
    assert closed(s.send(b"y\r\n"))


def test_too_long_command_is_answered_logged_and_closed() -> None:
    s = session(imap=ImapSettings(client_buffer=64))
    events = s.send(b"a LOGIN " + b"x" * 60)
    assert replies(events) == b"a BAD invalid command\r\n"
    assert logs(events) == [b'client sent too long command "a LOGIN ' + b"x" * 56 + b'"']
    assert isinstance(events[-1], Close)


def test_too_long_command_before_its_tag_is_untagged() -> None:
    events = session(imap=ImapSettings(client_buffer=8)).send(b"abcdefghij")
    assert replies(events) == b"* BAD invalid command\r\n"


def test_command_filling_the_buffer_exactly_is_fine() -> None:
    s = session(imap=ImapSettings(client_buffer=16))
    assert (
        s.output(b"a NOOP\r\nb NOOP\r\n", b"c NOOP\r\n")
        == b"a OK completed\r\nb OK completed\r\nc OK completed\r\n"
    )


def test_partial_command_behind_pipelined_ones_can_overflow_the_uncompacted_buffer() -> None:
    s = session(imap=ImapSettings(client_buffer=64))
    events = s.send(b"a NOOP\r\n" * 7 + b"a NOOP", b"  \r\n")
    assert replies(events) == b"a OK completed\r\n" * 7 + b"a BAD invalid command\r\n"
    assert closed(events)


def test_input_beyond_an_exactly_full_buffer_is_answered_without_waiting_for_more() -> None:
    s = session(imap=ImapSettings(client_buffer=64))
    assert s.output(b"a NOOP\r\n" * 8 + b"b NOOP\r\n") == b"a OK completed\r\n" * 8 + b"b OK completed\r\n"


def test_pipelined_commands_get_one_reply_each_in_order() -> None:
    s = session()
    s.engine.receive_data(b"a NOOP\r\nb CAPABILITY\r\nc NOOP\r\n")
    assert s.engine.next_event() == Reply(b"a OK completed\r\n")
    assert isinstance(s.engine.next_event(), Reply)
    assert s.engine.next_event() == Reply(b"c OK completed\r\n")


def test_bytes_pipelined_after_login_are_kept_for_the_backend() -> None:
    s = session()
    events = s.send(b"a LOGIN u p\r\nb SELECT INBOX\r\n")
    assert isinstance(events[-1], Authenticate)
    assert s.engine.take_unconsumed() == b"b SELECT INBOX\r\n"


def test_bytes_arriving_during_auth_are_kept_too() -> None:
    s = session(imap=ImapSettings(client_buffer=16))
    s.send(b"a LOGIN u p\r\n")
    s.engine.receive_data(b"b SELECT INBOX and more than the buffer holds\r\n")
    assert s.engine.take_unconsumed() == b"b SELECT INBOX and more than the buffer holds\r\n"


# --- after a rejected attempt


def test_rejection_is_tagged_and_the_session_goes_on() -> None:
    s = session()
    s.send(b"a1 LOGIN u p\r\nb NOOP\r\n")
    assert s.reject(b"Invalid login or password") == b"a1 NO Invalid login or password\r\nb OK completed\r\n"


def test_rejection_of_authenticate_uses_its_tag() -> None:
    s = session()
    s.send(b"t7 AUTHENTICATE PLAIN\r\n", b"AGJvYgBzZWNyZXQ=\r\n")
    assert s.reject() == b"t7 NO Invalid login\r\n"


def test_invalid_command_after_a_rejection_gets_no_stale_tag() -> None:
    s = session()
    s.send(b"a LOGIN u p\r\n")
    s.reject()
    assert s.output(b"*\r\n") == b"* BAD invalid command\r\n"


def test_rejection_abandons_the_exchange_and_allows_a_new_attempt() -> None:
    s = session()
    s.send(b"a LOGIN u p\r\n")
    s.reject()
    assert [(c.login, c.imap_tag) for c in credentials(s.send(b"b LOGIN v q\r\n"))] == [(b"v", b"b")]


def test_next_event_waits_during_authentication() -> None:
    s = session()
    s.send(b"a LOGIN u p\r\nb NOOP\r\n")
    assert s.drain() == []
    assert s.engine.next_event() == s.engine.next_event()


def test_closed_engine_keeps_saying_close_and_ignores_data() -> None:
    s = session()
    s.send(b"a LOGOUT\r\n")
    s.engine.receive_data(b"b NOOP\r\n")
    assert s.engine.next_event() == Close("logout")
    assert s.engine.take_unconsumed() == b""


def test_log_message_escapes_non_utf8_bytes_but_raw_keeps_them() -> None:
    [log] = [
        e for e in session(imap=ImapSettings(client_buffer=8)).send(b"a\xff\xfebcdefgh") if isinstance(e, Log)
    ]
    assert log.raw == b'client sent too long command "a\xff\xfebcdef"'
    assert log.message == 'client sent too long command "a\\xff\\xfebcdef"'


_TAGS = st.sampled_from([b"a", b"A1", b"x.y_z-", b"a" * 32, b"a" * 33, b"*", b"", b"a{1}"])
_SPACES = st.sampled_from([b" ", b"  ", b"", b"\t"])
_COMMANDS = st.sampled_from(
    [b"LOGIN", b"login", b"NOOP", b"Capability", b"LOGOUT", b"STARTTLS", b"FOO", b"LOG1N"]
)
_ARGUMENTS = st.sampled_from(
    [b"user", b'"u s"', b'""', b'"a\\b"', b"{3}", b"{0+}", b'ab"c', b'"x"y', b"\x00\xff", b"p{a}ss", b'"q'],
)
_ENDS = st.sampled_from([b"\r\n", b"\n", b" \r\n", b"\r", b"", b"\rx\n"])
_LINES = st.builds(
    lambda tag, space, command, arguments, end: tag + space + command + b"".join(arguments) + end,
    _TAGS,
    _SPACES,
    _COMMANDS,
    st.lists(
        st.tuples(st.sampled_from([b" ", b" ", b" ", b"  ", b""]), _ARGUMENTS).map(b"".join), max_size=5
    ),
    _ENDS,
)


@given(_LINES)
@example(b"a LOGIN one two three four\r\n")
@example(b"a LOGIN one two three\r\n")
@example(b'a1 login "u s" ""  \n')
@example(b"a" * 33 + b" NOOP\r\n")
@example(b"a" * 32 + b" NOOP\r\n")
@example(b"a AUTHENTICATE PLAIN\r\n")
@example(b"a LOGIN {3}\r\n")
@example(b'a LOGIN "x"y z\r\n')
@example(b'a LOGIN "x\\\\y" z\r\n')
def test_plain_command_lines_read_by_expression_give_what_the_state_machine_gives(line: bytes) -> None:
    from mailgate.protocol.imap import ImapParser
    from tests.protocol.driver import parsed_both_ways

    fast, by_state = parsed_both_ways(
        ImapParser, line, lambda parser, _: (parser.tag, parser.command, parser.args, parser.state)
    )
    assert fast == by_state
