"""The shared machinery: nginx's input buffer, the POP3/SMTP verb parser, and the driving loop."""

from __future__ import annotations

import gc
from collections.abc import Callable
from enum import Enum

import pytest

from mailgate.config.model import (
    ImapAuth,
    ImapSettings,
    Pop3Auth,
    Pop3Settings,
    Protocol,
    SmtpAuth,
    SmtpSettings,
)
from mailgate.protocol.engine import ClientBuffer, ParseResult, PreAuthEngine, VerbParser
from mailgate.protocol.events import Close, NeedData, Reply
from mailgate.protocol.imap import ImapPreAuth
from mailgate.protocol.pop3 import Pop3PreAuth
from mailgate.protocol.sasl import encode_base64
from mailgate.protocol.smtp import SmtpPreAuth
from tests.protocol.driver import Session as DrivenSession
from tests.protocol.driver import credentials, server_config


class Verb(Enum):
    USER = b"USER"
    AUTH = b"AUTH"
    NOOP = b"NOOP"


def parser(max_arguments: int = 3) -> VerbParser[Verb]:
    return VerbParser(
        {verb.value: verb for verb in Verb},
        max_arguments=max_arguments,
        continued_by=Verb.AUTH,
        keeps_spaces=frozenset({Verb.USER}),
    )


def buffer_with(data: bytes, capacity: int = 128) -> ClientBuffer:
    buffer = ClientBuffer(capacity)
    buffer.feed(data)
    buffer.fill()
    return buffer


def test_buffer_takes_only_what_fits_and_keeps_the_rest_waiting() -> None:
    buffer = buffer_with(b"0123456789", capacity=4)
    assert bytes(buffer.data) == b"0123"
    assert buffer.full and buffer.has_pending


def test_buffer_rewinds_only_when_everything_was_consumed() -> None:
    buffer = buffer_with(b"abcd", capacity=4)
    buffer.pos = 3
    buffer.rewind_if_consumed()
    assert (bytes(buffer.data), buffer.pos) == (b"abcd", 3)
    buffer.pos = 4
    buffer.rewind_if_consumed()
    assert (bytes(buffer.data), buffer.pos) == (b"", 0)


def test_buffer_refills_after_a_rewind() -> None:
    buffer = buffer_with(b"abcdef", capacity=4)
    buffer.pos = 4
    buffer.rewind_if_consumed()
    buffer.fill()
    assert bytes(buffer.data) == b"ef"
    assert not buffer.has_pending


def test_take_unconsumed_returns_buffered_then_waiting_bytes_and_empties_the_buffer() -> None:
    buffer = buffer_with(b"abcdef", capacity=4)
    buffer.pos = 1
    assert buffer.take_unconsumed() == b"bcdef"
    assert not buffer.has_unparsed and not buffer.has_pending


def test_discard_drops_everything() -> None:
    buffer = buffer_with(b"abcdef", capacity=4)
    buffer.discard()
    assert buffer.take_unconsumed() == b""


def test_verb_parser_splits_arguments_on_runs_of_spaces() -> None:
    verbs = parser()
    assert verbs.parse(buffer_with(b"noop  a   b\r\n")) is ParseResult.COMMAND
    assert (verbs.command, verbs.args) == (Verb.NOOP, [b"a", b"b"])


def test_verb_parser_keeps_spaces_in_the_argument_of_selected_verbs() -> None:
    verbs = parser()
    assert verbs.parse(buffer_with(b"USER   a b  \r\n")) is ParseResult.COMMAND
    assert verbs.args == [b"a b  "]


def test_verb_parser_limits_arguments() -> None:
    verbs = parser(max_arguments=2)
    buffer = buffer_with(b"NOOP a b\r\nNOOP a b c\r\n")
    assert verbs.parse(buffer) is ParseResult.COMMAND
    verbs.args = []
    assert verbs.parse(buffer) is ParseResult.INVALID
    assert buffer.pos == len(buffer.data)


def test_verb_parser_command_text_runs_to_the_last_argument() -> None:
    verbs = parser()
    buffer = buffer_with(b"x\r\nnoop  a  b  \r\n")
    assert verbs.parse(buffer) is ParseResult.INVALID
    assert verbs.parse(buffer) is ParseResult.COMMAND
    assert verbs.command_text(buffer) == b"noop  a  b"


@pytest.mark.parametrize("line", [b"NOOPX", b"NOO", b"N0OP", b"", b"NOOP\rX", b" NOOP"])
def test_verb_parser_rejects_other_words_and_stray_cr(line: bytes) -> None:
    assert parser().parse(buffer_with(line + b"\r\n")) is ParseResult.INVALID


def test_verb_parser_waits_for_the_end_of_an_invalid_line() -> None:
    verbs = parser()
    buffer = buffer_with(b"BAD command")
    assert verbs.parse(buffer) is ParseResult.AGAIN
    buffer.feed(b" still\r\nNOOP\r\n")
    buffer.fill()
    assert verbs.parse(buffer) is ParseResult.INVALID
    assert verbs.parse(buffer) is ParseResult.COMMAND


def test_verb_parser_reads_continuation_lines_after_its_continued_verb() -> None:
    verbs = parser()
    buffer = buffer_with(b"AUTH LOGIN\r\nNOOP x\r\n")
    assert verbs.parse(buffer) is ParseResult.COMMAND
    assert verbs.reading_continuation
    verbs.args = []
    assert verbs.parse(buffer) is ParseResult.COMMAND
    assert (verbs.command, verbs.args) == (Verb.AUTH, [b"NOOP", b"x"])
    verbs.expect_command()
    assert not verbs.reading_continuation


class BrokenSmtp(SmtpPreAuth):
    def _handle(self, result: ParseResult) -> None:
        raise RuntimeError("a bug")


def test_a_bug_in_a_handler_becomes_the_internal_error_line_not_a_traceback() -> None:
    engine = BrokenSmtp(server_config(Protocol.SMTP), tls_active=False)
    engine.receive_data(b"NOOP\r\n")
    assert engine.next_event() == Reply(b"451 4.3.2 Internal server error\r\n")
    assert engine.next_event() == Close("internal error")


def test_empty_input_needs_data() -> None:
    engine = SmtpPreAuth(server_config(Protocol.SMTP), tls_active=False)
    engine.receive_data(b"")
    assert engine.next_event() == NeedData()


@pytest.mark.parametrize(
    ("protocol", "login"),
    [
        (Protocol.IMAP, b"a LOGIN bob secret\r\n"),
        (Protocol.IMAP, b"a AUTHENTICATE CRAM-MD5\r\n" + encode_base64(b"bob " + b"0" * 32) + b"\r\n"),
        (Protocol.POP3, b"USER bob\r\nPASS secret\r\n"),
        (Protocol.POP3, b"AUTH CRAM-MD5\r\n" + encode_base64(b"bob " + b"0" * 32) + b"\r\n"),
        (Protocol.SMTP, b"EHLO x\r\nAUTH CRAM-MD5\r\n" + encode_base64(b"bob " + b"0" * 32) + b"\r\n"),
    ],
)
def test_an_engine_is_freed_without_the_cyclic_collector(protocol: Protocol, login: bytes) -> None:
    # A cycle per session (an engine holding its own bound method) made the collector run every few
    # sessions under load; everything an engine builds must go when its last reference does.
    server = server_config(
        protocol,
        imap=ImapSettings(auth=frozenset({ImapAuth.PLAIN, ImapAuth.CRAM_MD5})),
        pop3=Pop3Settings(auth=frozenset({Pop3Auth.PLAIN, Pop3Auth.CRAM_MD5})),
        smtp=SmtpSettings(auth=frozenset({SmtpAuth.PLAIN, SmtpAuth.CRAM_MD5})),
    )
    engines: dict[Protocol, Callable[..., PreAuthEngine]] = {
        Protocol.IMAP: ImapPreAuth,
        Protocol.POP3: Pop3PreAuth,
        Protocol.SMTP: SmtpPreAuth,
    }
    gc.collect()
    gc.disable()
    try:
        session = DrivenSession(engines[protocol](server, tls_active=True))
        session.engine.greeting()
        session.send(*(line + b"\n" for line in login.split(b"\n") if line))
        assert credentials(session.events)
        del session
        assert gc.collect() == 0
    finally:
        gc.enable()
