import base64
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.config.model import LogLevel, Protocol
from mailgate.protocol.credentials import AuthMethod
from mailgate.proxy.backend_login import (
    BackendLogin,
    BackendLoginEvent,
    Done,
    Failed,
    ImapBackendLogin,
    Pop3BackendLogin,
    Send,
    SmtpBackendLogin,
    backend_login_for,
    xtext,
)
from tests.proxy.servers import credentials, server_config

IMAP_ERROR = b"* BAD internal server error\r\n"
POP3_ERROR = b"-ERR internal server error\r\n"
SMTP_ERROR = b"451 4.3.2 Internal server error\r\n"

# A dialogue: each backend reply, and what the engine answers to it.
Dialogue = Sequence[tuple[bytes, BackendLoginEvent]]

UPSTREAM_TIMED_OUT = "upstream timed out (110: Connection timed out)"


def pop3(password: bytes | None = b"secret", login: bytes = b"bob", **proxy: Any) -> Pop3BackendLogin:
    return Pop3BackendLogin(server_config(Protocol.POP3, **proxy), login=login, password=password)


def imap(
    password: bytes | None = b"pa ss", login: bytes = b"user", tag: bytes = b"a2", **proxy: Any
) -> ImapBackendLogin:
    return ImapBackendLogin(
        server_config(Protocol.IMAP, **proxy),
        credentials(Protocol.IMAP, imap_tag=tag),
        login=login,
        password=password,
    )


def smtp(
    *,
    method: AuthMethod = AuthMethod.PLAIN,
    helo: bytes = b"client.example.org",
    esmtp: bool = True,
    login: bytes = b"user",
    password: bytes | None = b"pass",
    address: str = "192.0.2.42",
    host: str = "[UNAVAILABLE]",
    **proxy: Any,
) -> SmtpBackendLogin:
    fields = {"smtp_helo": helo, "smtp_esmtp": esmtp}
    if method is AuthMethod.NONE:
        fields |= {"smtp_from": b"MAIL FROM:<a@example.org>", "smtp_to": b"RCPT TO:<b@example.net>"}
    return SmtpBackendLogin(
        server_config(Protocol.SMTP, **proxy),
        credentials(Protocol.SMTP, method, **fields),
        login=login,
        password=password,
        client_address=address,
        client_host=host,
    )


def play(engine: BackendLogin, dialogue: Dialogue) -> None:
    """Feed each reply whole and check the engine's answer to it."""
    for reply, expected in dialogue:
        assert engine.receive_data(reply) == [expected]


def play_split(engine: BackendLogin, dialogue: Dialogue, cuts: Callable[[bytes], Iterator[bytes]]) -> None:
    """Feed each reply in the pieces `cuts` makes of it; only its last piece may produce the answer."""
    for reply, expected in dialogue:
        events: list[BackendLoginEvent] = []
        for piece in cuts(reply):
            events += engine.receive_data(piece)
        assert events == [expected]


def cut_at(cut: int, reply: bytes) -> Iterator[bytes]:
    return iter((reply[:cut], reply[cut:]))


def bytewise(reply: bytes) -> Iterator[bytes]:
    return (reply[i : i + 1] for i in range(len(reply)))


def assert_every_split_point(make_engine: Callable[[], BackendLogin], dialogue: Dialogue) -> None:
    for step in range(len(dialogue)):
        reply = dialogue[step][0]
        for cut in range(1, len(reply)):
            engine = make_engine()
            play(engine, dialogue[:step])
            play_split(engine, dialogue[step : step + 1], functools.partial(cut_at, cut))
    engine = make_engine()
    play_split(engine, dialogue, bytewise)


# --- POP3 -------------------------------------------------------------------------------------------------

POP3_LOGIN: Dialogue = [
    (b"+OK Dovecot ready.\r\n", Send(b"USER bob\r\n")),
    (b"+OK\r\n", Send(b"PASS secret\r\n")),
    (b"+OK Logged in.\r\n", Done(b"+OK Logged in.\r\n")),
]


def test_pop3_login_sends_user_then_pass_and_relays_the_reply_to_pass() -> None:
    play(pop3(), POP3_LOGIN)


def test_pop3_login_gives_the_same_answers_whatever_the_split_of_replies() -> None:
    assert_every_split_point(pop3, POP3_LOGIN)


def test_pop3_log_actions_follow_the_steps() -> None:
    engine = pop3()
    assert engine.action == "connecting to upstream"
    assert engine.receive_data(b"+OK") == []
    assert engine.action == "reading response from upstream"
    actions = []
    for reply, _ in POP3_LOGIN:
        engine.receive_data(reply)
        actions.append(engine.action)
    assert actions == ["sending user name to upstream", "sending password to upstream", None]


@pytest.mark.parametrize("step", [0, 1, 2])
def test_pop3_rejection_at_any_step_logs_and_sends_the_internal_error(step: int) -> None:
    engine = pop3()
    play(engine, POP3_LOGIN[:step])
    events = engine.receive_data(b"-ERR [AUTH] Authentication failed.\r\n")
    message = 'upstream sent invalid response: "-ERR [AUTH] Authentication failed."'
    assert events == [Failed(LogLevel.ERROR, message, POP3_ERROR)]
    assert engine.action == "reading response from upstream"
    assert engine.finished


def test_pop3_rejection_with_proxy_pass_error_message_relays_the_backend_reply() -> None:
    engine = pop3(pass_error_message=True)
    play(engine, POP3_LOGIN[:2])
    events = engine.receive_data(b"-ERR [AUTH] Authentication failed.\r\n-ERR more\r\n")
    message = 'upstream sent invalid response: "-ERR [AUTH] Authentication failed.\r\n-ERR more"'
    assert events == [Failed(LogLevel.INFO, message, b"-ERR [AUTH] Authentication failed.\r\n-ERR more\r\n")]


def test_pop3_without_password_fails_when_the_password_is_due() -> None:
    engine = pop3(password=None)
    play(engine, POP3_LOGIN[:1])
    assert engine.receive_data(b"+OK\r\n") == [Failed(LogLevel.ERROR, "no password available", POP3_ERROR)]
    assert engine.action == "sending password to upstream"


def test_login_replies_are_judged_only_once_they_end_with_crlf_and_hold_four_bytes() -> None:
    engine = pop3()
    assert engine.receive_data(b"+OK ready") == []
    assert engine.receive_data(b"\r") == []
    assert engine.receive_data(b"\n") == [Send(b"USER bob\r\n")]
    engine = pop3()
    assert engine.receive_data(b"\r\n") == []  # shorter than 4 bytes: nginx waits even at a CRLF
    assert engine.receive_data(b"+OK\r\n") == [
        Failed(LogLevel.ERROR, 'upstream sent invalid response: "\r\n+OK"', POP3_ERROR)
    ]


def test_lines_after_the_judged_one_are_dropped_between_steps() -> None:
    engine = pop3()
    assert engine.receive_data(b"+OK ready\r\n-ERR noise\r\n") == [Send(b"USER bob\r\n")]
    assert engine.receive_data(b"+OK\r\n") == [Send(b"PASS secret\r\n")]


def test_bytes_after_the_final_reply_reach_the_client_with_it() -> None:
    engine = pop3()
    play(engine, POP3_LOGIN[:2])
    assert engine.receive_data(b"+OK Logged in.\r\n+OK 2 messages\r\n") == [
        Done(b"+OK Logged in.\r\n+OK 2 messages\r\n")
    ]


def test_bytes_beyond_the_proxy_buffer_after_the_final_reply_reach_the_client() -> None:
    engine = pop3(buffer=16)
    play(engine, [(b"+OK\r\n", Send(b"USER bob\r\n")), (b"+OK\r\n", Send(b"PASS secret\r\n"))])
    data = b"+OK Logged in.\r\n" + b"x" * 50  # the reply fills the buffer exactly, as one recv would
    assert engine.receive_data(data) == [Done(data)]


def test_reply_longer_than_proxy_buffer_is_a_too_long_response_line() -> None:
    engine = pop3(buffer=16)
    events = engine.receive_data(b"+OK " + b"x" * 30 + b"\r\n")
    message = 'upstream sent too long response line: "+OK xxxxxxxxxxx"'
    assert events == [Failed(LogLevel.ERROR, message, POP3_ERROR)]


def test_too_long_response_line_log_text_stops_at_a_nul_byte() -> None:
    engine = pop3(buffer=8)
    message = 'upstream sent too long response line: "+OK"'
    assert engine.receive_data(b"+OK\x00abcdefgh") == [Failed(LogLevel.ERROR, message, POP3_ERROR)]


def test_a_full_buffer_still_waiting_fails_on_more_data_as_nginx_does() -> None:
    engine = smtp(buffer=12)
    assert engine.receive_data(b"220-abcdef\r\n") == []
    assert engine.receive_data(b"220 x\r\n") == [Failed(LogLevel.ERROR, None, SMTP_ERROR)]


def test_backend_closing_during_login_is_an_internal_error_without_log() -> None:
    engine = pop3()
    play(engine, POP3_LOGIN[:1])
    assert engine.receive_data(b"") == [Failed(LogLevel.ERROR, None, POP3_ERROR)]
    assert engine.finished
    assert engine.action == "reading response from upstream"


def test_timeout_is_logged_with_the_last_step_action() -> None:
    engine = pop3()
    play(engine, POP3_LOGIN[:1])
    assert engine.timed_out() == Failed(LogLevel.INFO, UPSTREAM_TIMED_OUT, POP3_ERROR)
    assert engine.action == "sending user name to upstream"


def test_timeout_during_login_logs_upstream_timed_out() -> None:
    engine = imap()
    assert engine.timed_out() == Failed(LogLevel.INFO, UPSTREAM_TIMED_OUT, IMAP_ERROR)
    assert engine.finished


def test_engine_refuses_input_after_it_finished() -> None:
    engine = pop3()
    engine.receive_data(b"")
    with pytest.raises(RuntimeError, match="already finished"):
        engine.receive_data(b"+OK\r\n")


# --- IMAP -------------------------------------------------------------------------------------------------

IMAP_LOGIN: Dialogue = [
    (b"* OK Backend ready.\r\n", Send(b"a2 LOGIN {4}\r\n")),
    (b"+ OK\r\n", Send(b"user {5}\r\n")),
    (b"+ OK\r\n", Send(b"pa ss\r\n")),
    (b"a2 OK Logged in\r\n", Done(b"a2 OK Logged in\r\n")),
]


def test_imap_login_uses_synchronising_literals_and_the_clients_tag() -> None:
    play(imap(), IMAP_LOGIN)


def test_imap_login_gives_the_same_answers_whatever_the_split_of_replies() -> None:
    assert_every_split_point(imap, IMAP_LOGIN)


def test_imap_literal_sizes_count_bytes() -> None:
    engine = imap(login="jöhn".encode(), password=b"", tag=b"A0001")
    assert engine.receive_data(b"* OK\r\n") == [Send(b"A0001 LOGIN {5}\r\n")]
    assert engine.receive_data(b"+\r\n+\r\n") == [Send("jöhn {0}\r\n".encode())]
    assert engine.receive_data(b"+ go\r\n") == [Send(b"\r\n")]


def test_imap_log_actions_follow_the_steps() -> None:
    engine = imap()
    actions = []
    for reply, _ in IMAP_LOGIN:
        engine.receive_data(reply)
        actions.append(engine.action)
    assert actions == [
        "sending LOGIN command to upstream",
        "sending user name to upstream",
        "sending password to upstream",
        None,
    ]


def test_imap_one_untagged_line_before_the_tagged_ok_is_relayed_with_it() -> None:
    dialogue = [*IMAP_LOGIN[:3], (b"* CAPABILITY IMAP4rev1 IDLE\r\na2 OK Logged in\r\n", Done(b""))]
    reply = dialogue[3][0]
    dialogue[3] = (reply, Done(reply))
    play(imap(), dialogue)
    assert_every_split_point(imap, dialogue)


def test_imap_two_untagged_lines_before_the_tagged_reply_are_an_invalid_response() -> None:
    engine = imap()
    play(engine, IMAP_LOGIN[:3])
    events = engine.receive_data(b"* CAPABILITY A\r\n* CAPABILITY B\r\na2 OK Logged in\r\n")
    message = 'upstream sent invalid response: "* CAPABILITY B\r\na2 OK Logged in"'
    assert events == [Failed(LogLevel.ERROR, message, IMAP_ERROR)]


def test_imap_tagged_no_is_logged_from_after_the_tag() -> None:
    engine = imap()
    play(engine, IMAP_LOGIN[:3])
    events = engine.receive_data(b"a2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    message = 'upstream sent invalid response: "NO [AUTHENTICATIONFAILED] Authentication failed."'
    assert events == [Failed(LogLevel.ERROR, message, IMAP_ERROR)]


def test_imap_tagged_no_with_proxy_pass_error_message_is_relayed_verbatim() -> None:
    engine = imap(pass_error_message=True)
    play(engine, IMAP_LOGIN[:3])
    reply = b"* CAPABILITY A\r\na2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    message = 'upstream sent invalid response: "NO [AUTHENTICATIONFAILED] Authentication failed."'
    assert engine.receive_data(reply) == [Failed(LogLevel.INFO, message, reply)]


def test_imap_reply_with_another_tag_is_an_invalid_response() -> None:
    engine = imap()
    play(engine, IMAP_LOGIN[:3])
    message = 'upstream sent invalid response: "a20 OK Logged in"'
    assert engine.receive_data(b"a20 OK Logged in\r\n") == [Failed(LogLevel.ERROR, message, IMAP_ERROR)]


@pytest.mark.parametrize(
    "greeting", [b"* PREAUTH ready\r\n", b"* BYE too busy\r\n", b"* ok lowercase\r\n", b"+OK pop3\r\n"]
)
def test_imap_greeting_must_start_with_untagged_ok(greeting: bytes) -> None:
    message = f'upstream sent invalid response: "{greeting[:-2].decode()}"'
    assert imap().receive_data(greeting) == [Failed(LogLevel.ERROR, message, IMAP_ERROR)]


@pytest.mark.parametrize("step", [1, 2])
def test_imap_literal_steps_need_a_continuation(step: int) -> None:
    engine = imap()
    play(engine, IMAP_LOGIN[:step])
    message = 'upstream sent invalid response: "a2 BAD literal"'
    assert engine.receive_data(b"a2 BAD literal\r\n") == [Failed(LogLevel.ERROR, message, IMAP_ERROR)]


def test_imap_without_password_fails_when_the_password_is_due() -> None:
    engine = imap(password=None)
    play(engine, [(b"* OK\r\n", Send(b"a2 LOGIN {4}\r\n")), (b"+ \r\n", Send(b"user {0}\r\n"))])
    assert engine.receive_data(b"+ \r\n") == [Failed(LogLevel.ERROR, "no password available", IMAP_ERROR)]


# --- SMTP -------------------------------------------------------------------------------------------------

SMTP_XCLIENT_AUTHENTICATED: Dialogue = [
    (b"220 mx.internal ESMTP\r\n", Send(b"EHLO mail.example.com\r\n")),
    (
        b"250-mx.internal\r\n250 XCLIENT ADDR LOGIN NAME\r\n",
        Send(b"XCLIENT ADDR=192.0.2.42 LOGIN=user NAME=[UNAVAILABLE]\r\n"),
    ),
    (b"220 mx.internal ESMTP\r\n", Send(b"EHLO client.example.org\r\n")),
    (b"250-mx.internal\r\n250-PIPELINING\r\n250 8BITMIME\r\n", Done(b"235 2.0.0 OK\r\n")),
]


def test_smtp_xclient_login_replays_the_client_ehlo_and_answers_235() -> None:
    engine = smtp()
    play(engine, SMTP_XCLIENT_AUTHENTICATED)
    assert engine.action is None


def test_smtp_xclient_login_gives_the_same_answers_whatever_the_split_of_replies() -> None:
    assert_every_split_point(smtp, SMTP_XCLIENT_AUTHENTICATED)


def test_smtp_log_actions_follow_the_steps() -> None:
    engine = smtp(method=AuthMethod.NONE)
    replies = [b"220 x\r\n", b"250 x\r\n", b"250 x\r\n", b"250 x\r\n", b"250 x\r\n", b"250 x\r\n"]
    actions = []
    for reply in replies:
        engine.receive_data(reply)
        actions.append(engine.action)
    assert actions == [
        "sending HELO/EHLO to upstream",
        "sending XCLIENT to upstream",
        "sending client HELO/EHLO to upstream",
        "sending MAIL FROM to upstream",
        "sending RCPT TO to upstream",
        None,
    ]


SMTP_RELAY_NONE: Dialogue = [
    (b"220 mx.internal ESMTP\r\n", Send(b"HELO mail.example.com\r\n")),
    (b"250 mx.internal\r\n", Send(b"MAIL FROM:<a@example.org>\r\n")),
    (b"250 2.1.0 Ok\r\n", Send(b"RCPT TO:<b@example.net>\r\n")),
    (b"250 2.1.5 Ok\r\n", Done(b"250 2.1.5 Ok\r\n")),
]


def test_smtp_none_without_xclient_replays_mail_and_rcpt_and_relays_the_rcpt_reply() -> None:
    play(smtp(method=AuthMethod.NONE, esmtp=False, xclient=False), SMTP_RELAY_NONE)


def test_smtp_none_gives_the_same_answers_whatever_the_split_of_replies() -> None:
    assert_every_split_point(
        lambda: smtp(method=AuthMethod.NONE, esmtp=False, xclient=False), SMTP_RELAY_NONE
    )


def test_smtp_none_relays_any_reply_to_rcpt() -> None:
    engine = smtp(method=AuthMethod.NONE, esmtp=False, xclient=False)
    play(engine, SMTP_RELAY_NONE[:3])
    reply = b"550-5.1.1 <b@example.net>: Recipient address rejected:\r\n550 5.1.1 User unknown\r\n"
    assert engine.receive_data(reply) == [Done(reply)]


def test_smtp_none_with_proxy_smtp_auth_still_replays_mail_and_rcpt() -> None:
    engine = smtp(method=AuthMethod.NONE, esmtp=False, xclient=False, smtp_auth=True)
    play(engine, SMTP_RELAY_NONE)


def test_smtp_none_with_xclient_accepts_220_or_250_to_xclient_before_mail() -> None:
    for code in (b"220", b"250"):
        engine = smtp(method=AuthMethod.NONE, helo=b"", esmtp=False, login=b"")
        play(
            engine,
            [
                (b"220 mx\r\n", Send(b"EHLO mail.example.com\r\n")),
                (b"250 mx\r\n", Send(b"XCLIENT ADDR=192.0.2.42 NAME=[UNAVAILABLE]\r\n")),
                (code + b" ok\r\n", Send(b"MAIL FROM:<a@example.org>\r\n")),
            ],
        )


@pytest.mark.parametrize(
    ("xclient", "esmtp", "verb"), [(True, False, b"EHLO"), (False, True, b"EHLO"), (False, False, b"HELO")]
)
def test_smtp_greets_with_ehlo_when_xclient_or_the_client_used_ehlo(
    xclient: bool, esmtp: bool, verb: bytes
) -> None:
    engine = smtp(xclient=xclient, esmtp=esmtp)
    assert engine.receive_data(b"220 mx\r\n") == [Send(verb + b" mail.example.com\r\n")]


def test_smtp_without_xclient_and_auth_is_done_after_helo() -> None:
    play(
        smtp(xclient=False),
        [(b"220 mx\r\n", Send(b"EHLO mail.example.com\r\n")), (b"250 mx\r\n", Done(b"235 2.0.0 OK\r\n"))],
    )


def test_smtp_xclient_without_client_helo_is_done_after_xclient() -> None:
    for code in (b"220", b"250"):
        engine = smtp(helo=b"", esmtp=False)
        play(engine, SMTP_XCLIENT_AUTHENTICATED[:2])
        assert engine.receive_data(code + b" mx\r\n") == [Done(b"235 2.0.0 OK\r\n")]


def test_smtp_client_helo_is_replayed_with_helo_when_the_client_used_helo() -> None:
    engine = smtp(esmtp=False)
    play(engine, SMTP_XCLIENT_AUTHENTICATED[:2])
    assert engine.receive_data(b"220 mx\r\n") == [Send(b"HELO client.example.org\r\n")]


def test_smtp_reply_to_the_replayed_client_helo_must_be_250() -> None:
    engine = smtp()
    play(engine, SMTP_XCLIENT_AUTHENTICATED[:3])
    message = 'upstream sent invalid response: "220 mx"'
    assert engine.receive_data(b"220 mx\r\n") == [Failed(LogLevel.ERROR, message, SMTP_ERROR)]


def test_smtp_proxy_smtp_auth_sends_auth_plain_and_omits_xclient_login() -> None:
    engine = smtp(smtp_auth=True, login=b"user", password=b"pass")
    auth = b"AUTH PLAIN " + base64.b64encode(b"\x00user\x00pass") + b"\r\n"
    play(
        engine,
        [
            (b"220 mx\r\n", Send(b"EHLO mail.example.com\r\n")),
            (b"250 mx\r\n", Send(b"XCLIENT ADDR=192.0.2.42 NAME=[UNAVAILABLE]\r\n")),
            (b"220 mx\r\n", Send(b"EHLO client.example.org\r\n")),
            (b"250 mx\r\n", Send(auth)),
            (b"235 2.7.0 Authentication successful\r\n", Done(b"235 2.0.0 OK\r\n")),
        ],
    )
    assert auth == b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"


def test_smtp_proxy_smtp_auth_rejected_is_an_invalid_response() -> None:
    engine = smtp(smtp_auth=True, xclient=False)
    play(
        engine,
        [
            (b"220 mx\r\n", Send(b"EHLO mail.example.com\r\n")),
            (b"250 mx\r\n", Send(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")),
        ],
    )
    message = 'upstream sent invalid response: "535 5.7.8 Error: authentication failed"'
    events = engine.receive_data(b"535 5.7.8 Error: authentication failed\r\n")
    assert events == [Failed(LogLevel.ERROR, message, SMTP_ERROR)]


def test_smtp_proxy_smtp_auth_without_password_logs_no_password_available() -> None:
    engine = smtp(smtp_auth=True, xclient=False, password=None, method=AuthMethod.EXTERNAL)
    play(engine, [(b"220 mx\r\n", Send(b"EHLO mail.example.com\r\n"))])
    assert engine.receive_data(b"250 mx\r\n") == [Failed(LogLevel.ERROR, "no password available", SMTP_ERROR)]
    assert engine.action == "sending AUTH to upstream"


def test_smtp_proxy_smtp_auth_sends_an_empty_password_when_it_is_known_but_empty() -> None:
    engine = smtp(smtp_auth=True, xclient=False, password=b"")
    engine.receive_data(b"220 mx\r\n")
    assert engine.receive_data(b"250 mx\r\n") == [
        Send(b"AUTH PLAIN " + base64.b64encode(b"\x00user\x00") + b"\r\n")
    ]


@pytest.mark.parametrize(
    ("step", "reply"),
    [
        (0, b"554 5.3.2 busy\r\n"),
        (0, b"250 not a greeting\r\n"),
        (1, b"500 5.5.1 EHLO\r\n"),
        (2, b"550 5.7.0 XCLIENT denied\r\n"),
    ],
)
def test_smtp_wrong_reply_code_at_any_step_is_an_invalid_response(step: int, reply: bytes) -> None:
    engine = smtp()
    play(engine, SMTP_XCLIENT_AUTHENTICATED[:step])
    message = f'upstream sent invalid response: "{reply[:-2].decode()}"'
    assert engine.receive_data(reply) == [Failed(LogLevel.ERROR, message, SMTP_ERROR)]


def test_smtp_multiline_rejection_is_logged_and_relayed_whole() -> None:
    reply = b"554-mx.internal\r\n554 5.7.1 go away\r\n"
    message = 'upstream sent invalid response: "554-mx.internal\r\n554 5.7.1 go away"'
    assert smtp().receive_data(reply) == [Failed(LogLevel.ERROR, message, SMTP_ERROR)]
    assert smtp(pass_error_message=True).receive_data(reply) == [Failed(LogLevel.INFO, message, reply)]


def test_smtp_multiline_reply_waits_for_its_last_line() -> None:
    engine = smtp()
    assert engine.receive_data(b"220-mx.internal ESMTP\r\n") == []
    assert engine.receive_data(b"220-second line\r\n") == []
    assert engine.receive_data(b"220 last\r\n") == [Send(b"EHLO mail.example.com\r\n")]


def test_smtp_bytes_after_the_final_reply_follow_the_synthetic_235() -> None:
    engine = smtp(xclient=False)
    engine.receive_data(b"220 mx\r\n")
    assert engine.receive_data(b"250-mx\r\n250 SIZE\r\n421 bye\r\n") == [Done(b"235 2.0.0 OK\r\n421 bye\r\n")]


# --- XCLIENT ----------------------------------------------------------------------------------------------


def _xclient_line(**options: object) -> bytes:
    engine = smtp(**options)  # type: ignore[arg-type]
    engine.receive_data(b"220 mx\r\n")
    [event] = engine.receive_data(b"250 mx\r\n")
    assert isinstance(event, Send)
    return event.data


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.42", b"XCLIENT ADDR=192.0.2.42 LOGIN=user NAME=client.example.org\r\n"),
        ("2001:db8::42", b"XCLIENT ADDR=IPV6:2001:db8::42 LOGIN=user NAME=client.example.org\r\n"),
        ("::ffff:192.0.2.42", b"XCLIENT ADDR=IPV6:::ffff:192.0.2.42 LOGIN=user NAME=client.example.org\r\n"),
        ("unix:", b"XCLIENT ADDR=unix: LOGIN=user NAME=client.example.org\r\n"),
    ],
)
def test_xclient_addr_marks_ipv6_addresses(address: str, expected: bytes) -> None:
    assert _xclient_line(address=address, host="client.example.org") == expected


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        (b"user@example.com", b" LOGIN=user@example.com "),
        (b"a b+c=d", b" LOGIN=a+20b+2Bc+3Dd "),
        (b"\x00\x1f\x7f\xff!~", b" LOGIN=+00+1F+7F+FF!~ "),
        ("jöhn".encode(), b" LOGIN=j+C3+B6hn "),
    ],
)
def test_xclient_login_is_xtext_encoded(login: bytes, expected: bytes) -> None:
    assert expected in _xclient_line(login=login)


def test_xclient_without_login_has_no_login_attribute() -> None:
    assert _xclient_line(login=b"") == b"XCLIENT ADDR=192.0.2.42 NAME=[UNAVAILABLE]\r\n"


@given(st.binary(max_size=64))
def test_xtext_is_printable_and_decodes_back(value: bytes) -> None:
    encoded = xtext(value)
    assert all(0x21 <= byte <= 0x7E and byte != ord("=") for byte in encoded)
    decoded = bytearray()
    index = 0
    while index < len(encoded):
        if encoded[index] == ord("+"):
            decoded.append(int(encoded[index + 1 : index + 3], 16))
            index += 3
        else:
            decoded.append(encoded[index])
            index += 1
    assert bytes(decoded) == value


# --- all engines ------------------------------------------------------------------------------------------


def test_backend_login_for_picks_the_engine_of_the_servers_protocol() -> None:
    for protocol, engine_class in (
        (Protocol.IMAP, ImapBackendLogin),
        (Protocol.POP3, Pop3BackendLogin),
        (Protocol.SMTP, SmtpBackendLogin),
    ):
        engine = backend_login_for(
            server_config(protocol),
            credentials(protocol, imap_tag=b"a1"),
            login=b"u",
            password=b"p",
            client_address="192.0.2.1",
            client_host="[UNAVAILABLE]",
        )
        assert type(engine) is engine_class


ENGINES: list[Callable[[], BackendLogin]] = [
    pop3,
    lambda: pop3(pass_error_message=True, buffer=64),
    imap,
    lambda: imap(pass_error_message=True, buffer=32),
    smtp,
    lambda: smtp(method=AuthMethod.NONE, xclient=False, buffer=48),
    lambda: smtp(smtp_auth=True, pass_error_message=True),
]
REPLY_PIECES = st.sampled_from(
    [
        b"+OK",
        b"+",
        b"* OK",
        b"* ",
        b"a2 OK",
        b"a2 ",
        b"220",
        b"250",
        b"235",
        b"-",
        b" ",
        b"\r\n",
        b"\r",
        b"\n",
        b"\x00",
    ]
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.sampled_from(range(len(ENGINES))),
    st.lists(st.lists(REPLY_PIECES | st.binary(max_size=12), max_size=8).map(b"".join), max_size=12),
)
def test_engines_never_raise_whatever_the_backend_sends(engine_index: int, chunks: list[bytes]) -> None:
    engine = ENGINES[engine_index]()
    for chunk in chunks:
        if engine.finished:
            break
        events = engine.receive_data(chunk)
        assert all(isinstance(event, Send) for event in events[:-1])
        assert engine.finished == (bool(events) and not isinstance(events[-1], Send))


@given(st.sampled_from(["pop3", "imap", "smtp", "none"]), st.data())
def test_any_chunking_of_a_whole_dialogue_gives_the_same_events(kind: str, data: st.DataObject) -> None:
    dialogues: dict[str, tuple[Callable[[], BackendLogin], Dialogue]] = {
        "pop3": (pop3, POP3_LOGIN),
        "imap": (imap, IMAP_LOGIN),
        "smtp": (smtp, SMTP_XCLIENT_AUTHENTICATED),
        "none": (lambda: smtp(method=AuthMethod.NONE, esmtp=False, xclient=False), SMTP_RELAY_NONE),
    }
    make_engine, dialogue = dialogues[kind]
    engine = make_engine()
    for reply, expected in dialogue:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(reply) - 1), max_size=4)))
        bounds = [0, *cuts, len(reply)]
        events: list[BackendLoginEvent] = []
        for start, end in itertools.pairwise(bounds):
            events += engine.receive_data(reply[start:end])
        assert events == [expected]


@given(st.binary(max_size=40))
def test_xtext_encodes_every_special_byte_and_nothing_else(value: bytes) -> None:
    from mailgate.proxy.backend_login import xtext

    expected = b"".join(
        b"+%02X" % byte if byte <= 0x20 or byte >= 0x7F or byte in b"+=" else bytes([byte]) for byte in value
    )
    assert xtext(value) == expected


# --- replies answered by the connection (Peer.exchange) ----------------------------------------------------

_ENGINES: list[Callable[[], BackendLogin]] = [
    pop3,
    imap,
    functools.partial(imap, password=None),
    smtp,
    functools.partial(smtp, method=AuthMethod.NONE),
    functools.partial(smtp, xclient=False),
]
_REPLY_PIECES = st.sampled_from(
    [b"+", b"OK", b"* ", b"220", b"250", b"235", b"-", b" ", b"a2 ", b"x", b"\r\n", b"\n", b"\r", b"-ERR"]
)


def test_answers_are_the_leading_steps_a_prefix_accepts() -> None:
    assert pop3().answers() == ((b"+OK", b"USER bob\r\n"), (b"+OK", b"PASS secret\r\n"))
    assert pop3(password=None).answers() == ((b"+OK", b"USER bob\r\n"),)
    assert imap().answers() == (
        (b"* OK", b"a2 LOGIN {4}\r\n"),
        (b"+", b"user {5}\r\n"),
        (b"+", b"pa ss\r\n"),
    )
    assert [prefix for prefix, _ in smtp(xclient=False).answers()] == [b"220 "]
    assert [prefix for prefix, _ in smtp().answers()] == [b"220 ", b"250 "]  # then 220/250: by code alone


@pytest.mark.parametrize("make_engine", _ENGINES)
@given(reply=st.lists(_REPLY_PIECES, max_size=8).map(b"".join), skipped=st.integers(0, 3))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_reply_the_connection_answers_is_one_the_engine_would_answer_the_same(
    make_engine: Callable[[], BackendLogin], reply: bytes, skipped: int
) -> None:
    # Peer.exchange answers a reply of 4 bytes or more ending with CRLF that starts with the step's prefix;
    # the engine, had it seen that reply, must have sent the same bytes and stood where answered() puts it.
    reply += b"\r\n"
    judged, answered = make_engine(), make_engine()
    answers = judged.answers()
    skipped = min(skipped, len(answers))
    for prefix, then_send in answers[:skipped]:
        assert judged.receive_data(prefix + b" fine\r\n") == [Send(then_send)]
    answered.answered(skipped)
    assert answered.answers() == answers[skipped:]
    assert answered.action == judged.action
    if len(reply) < 4 or skipped == len(answers) or not reply.startswith(answers[skipped][0]):
        assert answered.receive_data(reply) == judged.receive_data(reply)
        return
    assert judged.receive_data(reply) == [Send(answers[skipped][1])]
    answered.answered(1)
    assert answered.action == judged.action
    assert answered.answers() == judged.answers()
