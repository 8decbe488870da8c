"""The machinery the IMAP, POP3 and SMTP pre-auth engines share: nginx's input buffer and the event loop.

nginx reads a client into one fixed-size buffer that is rewound only when every byte in it has been
consumed (no compaction); a command that needs more room than is left is "too long" and ends the session.
It parses and answers one command at a time, so replies stay in order however the client pipelines. The
engines reproduce this exactly: bytes beyond the buffer's free space wait in `ClientBuffer` as if still
in the socket, and `next_event` handles at most one command per `Reply`.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from enum import Enum
from typing import ClassVar, Generic, TypeVar

from mailgate.config.model import ServerConfig, StartTls
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.events import Authenticate, Close, Event, Log, NeedData, Reply
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.sasl import make_salt

CR = 0x0D
LF = 0x0A
SP = 0x20

LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
LETTER_RUN = re.compile(rb"[A-Za-z]*")
_ARGUMENT_RUN = re.compile(rb"[^ \r\n]*")
_LINE_RUN = re.compile(rb"[^\r\n]*")
# A verb and the rest of its line, up to a complete line end (VerbParser's fast path).
_VERB_LINE = re.compile(rb"([A-Za-z]+)([^\r\n]*)\r?\n")


def skip_run(run: re.Pattern[bytes], data: bytearray, start: int) -> int:
    """Where the parser goes on after the byte at `start`, which left it in its state: past every following
    byte that `run` matches, which would leave it there too (one regex step instead of one loop turn each)."""
    match = run.match(data, start + 1)
    return start + 1 if match is None else match.end()


CommandT = TypeVar("CommandT", bound=Enum)
ValueT = TypeVar("ValueT")


class PerServer(Generic[ValueT]):
    """A value built once per `ServerConfig` object (capability lines, greetings), not once per session.

    Keyed by the object's identity, without keeping it alive: the entry goes when the server does.
    """

    def __init__(self, build: Callable[[ServerConfig], ValueT]) -> None:
        self._build = build
        self._built: dict[int, tuple[weakref.ref[ServerConfig], ValueT]] = {}

    def __call__(self, server: ServerConfig) -> ValueT:
        entry = self._built.get(id(server))
        if entry is not None and entry[0]() is server:
            return entry[1]
        key = id(server)
        value = self._build(server)
        self._built[key] = (weakref.ref(server, lambda _: self._built.pop(key, None)), value)
        return value


class ClientBuffer:
    """nginx's pre-auth input buffer of `capacity` bytes, and the client bytes that did not fit yet.

    `data` holds the buffer from its start to its last byte read; parsers consume it from `pos`. Bytes fed
    while the buffer is full wait in `pending`, as they would wait in the socket for nginx's next `recv`.
    """

    __slots__ = ("_pending", "capacity", "data", "pos")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1)
        self.data = bytearray()
        self.pos = 0
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        self._pending += data

    def fill(self) -> None:
        """Move waiting bytes into the buffer's free space (nginx's `recv` into `last..end`)."""
        room = self.capacity - len(self.data)
        if room > 0 and self._pending:
            self.data += self._pending[:room]
            del self._pending[:room]

    @property
    def full(self) -> bool:
        return len(self.data) >= self.capacity

    @property
    def has_unparsed(self) -> bool:
        return self.pos < len(self.data)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def rewind_if_consumed(self) -> None:
        """Start over at the buffer's beginning, but only when every byte in it was consumed."""
        if self.pos == len(self.data):
            self.data.clear()
            self.pos = 0

    def discard(self) -> None:
        """Drop every byte read or waiting (after STARTTLS: no plaintext crosses into TLS)."""
        self.data.clear()
        self.pos = 0
        self._pending.clear()

    def unconsumed(self) -> bytes:
        """Every byte not yet consumed, buffered or waiting, in arrival order (they stay)."""
        return bytes(self.data[self.pos :] + self._pending)

    def take_unconsumed(self) -> bytes:
        """Remove and return every byte not yet consumed, buffered or waiting, in arrival order."""
        unconsumed = self.unconsumed()
        self.discard()
        return unconsumed

    def contents(self) -> bytes:
        """The whole buffer from its start, as nginx quotes it in `too long command` messages."""
        return bytes(self.data)


class ParseResult(Enum):
    """What a protocol parser made of the buffered bytes."""

    AGAIN = "again"  # the command is incomplete
    COMMAND = "command"  # a complete command (or SASL continuation line) is ready
    INVALID = "invalid"  # a syntax error, counted toward max_errors; the line was skipped
    LITERAL = "literal"  # IMAP `{N}`: send `+ OK` and read the literal's bytes


class _Phase(Enum):
    COMMANDS = "commands"
    AWAITING_TLS = "awaiting tls"
    AWAITING_AUTH = "awaiting auth"
    CLOSED = "closed"


class PreAuthEngine(ABC):
    """The common driving loop of the three pre-auth engines (sans-I/O; see `mailgate.protocol`).

    Drive it by calling `next_event` until it returns `NeedData` (then feed bytes with `receive_data`),
    writing each `Reply` completely before the next call. After `StartTls` call `tls_established` once
    the handshake succeeded; after `Authenticate` call `auth_failed` if the auth service rejected the
    attempt and the session goes on, or `take_unconsumed` to hand the client's pipelined bytes to the
    backend relay. Until then `next_event` says `NeedData` and processes nothing, and the session should
    not read from the client (nginx does not). After `Close` every call says `Close` again. Malformed
    input never raises: it is answered as nginx answers it.
    """

    __slots__ = (
        "_buffer",
        "_close",
        "_errors",
        "_events",
        "_phase",
        "_salt",
        "_salt_in_use",
        "_server",
        "_tls_active",
    )

    internal_error_line: ClassVar[bytes]
    cert_error_line: ClassVar[bytes]
    no_cert_line: ClassVar[bytes]

    def __init__(
        self, server: ServerConfig, *, tls_active: bool, salt: bytes | None, buffer_size: int
    ) -> None:
        self._server = server
        self._tls_active = tls_active
        self._salt = salt
        self._salt_in_use = False  # a salt the client has seen (POP3 greeting, CRAM-MD5 challenge)
        self._buffer = ClientBuffer(buffer_size)
        self._events: list[Event] = []  # rarely more than two: a list is smaller than a deque
        self._phase = _Phase.COMMANDS
        self._close: Close | None = None
        self._errors = 0

    @abstractmethod
    def greeting(self) -> bytes:
        """The first line the client gets (over TLS with `listen ... ssl`)."""

    @property
    def greeting_is_constant(self) -> bool:
        """Every session of this server gets the same greeting, sent before anything else happens (no
        salt in it, no resolver lookup or delay before it): it can be sent before the engine exists."""
        return False

    @abstractmethod
    def auth_failed(self, text: bytes, smtp_code: bytes | None) -> bytes:
        """The client's rejection line for `Auth-Status: text`; the engine is back in its initial state.

        Commands the client already sent are processed by the following `next_event` calls.
        """

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client (ignored once the engine closed the session)."""
        if self._phase is not _Phase.CLOSED:
            self._buffer.feed(data)

    def next_event(self) -> Event:
        """The next thing the session must do; `NeedData` when the engine waits for bytes or a callback."""
        if self._events:
            return self._events.pop(0)
        if self._close is not None:
            return self._close
        if self._phase is not _Phase.COMMANDS:
            return NeedData()
        try:
            self._process_one_command()
        except Exception:  # a bug must not become a traceback: nginx's answer to NGX_ERROR
            self._events.clear()
            self._events.append(Reply(self.internal_error_line))
            self._closing("internal error")
        if self._events:
            return self._events.pop(0)
        return NeedData()

    def tls_established(self) -> None:
        """The STARTTLS handshake and client-certificate check succeeded: continue over TLS."""
        self._tls_active = True
        if self._phase is _Phase.AWAITING_TLS:
            self._phase = _Phase.COMMANDS

    def take_unconsumed(self) -> bytes:
        """After `Authenticate`: the bytes the client sent behind the authenticating command."""
        return self._buffer.take_unconsumed()

    def unconsumed(self) -> bytes:
        """What `take_unconsumed` would return, left in place."""
        return self._buffer.unconsumed()

    # -----------------------------------------------------------------------------------------------
    # For the protocol engines

    @abstractmethod
    def _parse(self) -> ParseResult:
        """Advance the protocol parser over `self._buffer`."""

    @abstractmethod
    def _handle(self, result: ParseResult) -> None:
        """Answer a parsed command (`COMMAND`, `LITERAL`) or an invalid one (`INVALID`)."""

    def _process_one_command(self) -> None:
        buffer = self._buffer
        buffer.fill()
        if not buffer.has_unparsed and not buffer.has_pending:
            return
        result = self._parse()
        if result is ParseResult.AGAIN:
            if not buffer.full:
                return
            self._log(b'client sent too long command "' + buffer.contents() + b'"')
            self._handle(ParseResult.INVALID)
            self._closing("too long command")
            return
        if result is ParseResult.INVALID:
            self._errors += 1
            if self._errors >= self._server.core.max_errors:
                self._log(b"client sent too many invalid commands")
                self._handle(result)
                self._closing("too many invalid commands")
                return
        self._handle(result)

    @property
    def _starttls_only(self) -> bool:
        """`starttls only` refuses logins until TLS is active."""
        return not self._tls_active and self._server.ssl.starttls is StartTls.ONLY

    @property
    def _starttls_offered(self) -> bool:
        """STARTTLS/STLS is accepted (and advertised) now."""
        return not self._tls_active and self._server.ssl.starttls is not StartTls.OFF

    def _session_salt(self) -> bytes:
        """The session's `<R.T@server_name>`, made on first use unless the caller gave one."""
        if self._salt is None:
            self._salt = make_salt(self._server.core.server_name)
        self._salt_in_use = True
        return self._salt

    def _reply(self, data: bytes) -> None:
        self._events.append(Reply(data))

    def _log(self, raw: bytes) -> None:
        self._events.append(Log.info(raw))

    def _closing(self, reason: str) -> None:
        """Close after the replies queued so far; every later `next_event` says `Close` again."""
        self._close = Close(reason)
        self._phase = _Phase.CLOSED
        self._buffer.discard()

    def _start_tls(self) -> None:
        """After the OK reply: drop buffered plaintext and hand the socket to the TLS handshake."""
        self._buffer.discard()
        self._events.append(StartTlsEvent())
        self._phase = _Phase.AWAITING_TLS

    def _authenticate(self, credentials: Credentials) -> None:
        """Credentials are complete (nginx's `ngx_mail_auth`): stop reading until the auth answer."""
        self._buffer.rewind_if_consumed()
        if credentials.salt is None and self._salt_in_use and credentials.method is not AuthMethod.PLAIN:
            # nginx reports the session's salt (greeting or CRAM-MD5 challenge) with every method but plain.
            credentials = dataclasses.replace(credentials, salt=self._salt)
        self._events.append(Authenticate(credentials))
        self._phase = _Phase.AWAITING_AUTH

    def _resume_after_rejection(self) -> None:
        if self._phase is _Phase.AWAITING_AUTH:
            self._phase = _Phase.COMMANDS


class _VerbState(Enum):
    START = 0
    COMMAND = 1
    INVALID = 2
    SPACES_BEFORE_ARGUMENT = 3
    ARGUMENT = 4
    ALMOST_DONE = 5


class VerbParser(Generic[CommandT]):
    """nginx's POP3 and SMTP command parser: a verb, then up to `max_arguments` space-separated arguments.

    Resumable at any byte boundary. The argument of a verb in `keeps_spaces` runs to the end of the line,
    spaces included (POP3 USER/PASS). After `continued_by` (AUTH) the parser reads SASL continuation
    lines as bare arguments until `expect_command`.
    """

    __slots__ = (
        "_arg_start",
        "_arguments_end",
        "_command_start",
        "_continued_by",
        "_keeps_spaces",
        "_max_arguments",
        "_verbs",
        "args",
        "command",
        "state",
    )

    def __init__(
        self,
        verbs: Mapping[bytes, CommandT],
        *,
        max_arguments: int,
        continued_by: CommandT,
        keeps_spaces: frozenset[CommandT] = frozenset(),
    ) -> None:
        self._verbs = verbs
        self._max_arguments = max_arguments
        self._continued_by = continued_by
        self._keeps_spaces = keeps_spaces
        self.state = _VerbState.START
        self.command: CommandT | None = None
        self.args: list[bytes] = []
        self._command_start = 0
        self._arg_start = 0
        self._arguments_end = 0

    @property
    def reading_continuation(self) -> bool:
        return self.state is not _VerbState.START

    def expect_command(self) -> None:
        self.state = _VerbState.START

    def expect_continuation(self, buffer: ClientBuffer) -> None:
        """The next continuation line starts at the buffer's read position (after a rewind)."""
        self._arg_start = buffer.pos

    def command_text(self, buffer: ClientBuffer) -> bytes:
        """The command as typed, from its verb to the end of its last argument (SMTP MAIL/RCPT)."""
        return bytes(buffer.data[self._command_start : self._arguments_end])

    def parse(self, buffer: ClientBuffer) -> ParseResult:
        if self.state is _VerbState.START:
            # A whole command line (what clients send), read without the byte loop, with the result the
            # state machine gives it (tests/protocol/test_pop3.py checks the two agree).
            line = _VERB_LINE.match(buffer.data, buffer.pos)
            if line is not None and self._take_line(buffer, line):
                return ParseResult.COMMAND
        return self._parse_by_state(buffer)

    def _take_line(self, buffer: ClientBuffer, line: re.Match[bytes]) -> bool:
        verb, rest = line[1], line[2]
        if rest and rest[0] != SP:
            return False
        command = self._verbs.get(verb.upper())
        if command is None or command is self._continued_by:
            return False
        verb_end = line.end(1)
        if command in self._keeps_spaces:
            argument = rest.lstrip(b" ")
            arguments = [argument] if argument else []
            arguments_end = line.end(2) if argument else verb_end
        else:
            arguments = [argument for argument in rest.split(b" ") if argument]
            arguments_end = verb_end + len(rest.rstrip(b" ")) if arguments else verb_end
        if len(arguments) > self._max_arguments:
            return False
        self._command_start = buffer.pos
        self.command = command
        self.args.extend(arguments)
        self._arguments_end = arguments_end
        buffer.pos = line.end()
        return True

    def _parse_by_state(self, buffer: ClientBuffer) -> ParseResult:
        """nginx's state machine, byte by byte (runs of ordinary bytes in one step)."""
        data = buffer.data
        last = len(data)
        p = buffer.pos
        state = self.state
        while p < last:
            ch = data[p]
            if state is _VerbState.START:
                self._command_start = p
                state = _VerbState.COMMAND
            if state is _VerbState.COMMAND:
                if ch in (SP, CR, LF):
                    command = self._verbs.get(bytes(data[self._command_start : p]).upper())
                    if command is None:
                        return self._invalid(buffer, p)
                    self.command = command
                    self._arguments_end = p
                    if ch == LF:
                        return self._done(buffer, p)
                    state = _VerbState.SPACES_BEFORE_ARGUMENT if ch == SP else _VerbState.ALMOST_DONE
                elif ch not in LETTERS:
                    return self._invalid(buffer, p)
                else:
                    p = skip_run(LETTER_RUN, data, p)
                    continue
            elif state is _VerbState.INVALID:
                return self._invalid(buffer, p)
            elif state is _VerbState.SPACES_BEFORE_ARGUMENT:
                if ch == CR:
                    state = _VerbState.ALMOST_DONE
                elif ch == LF:
                    return self._done(buffer, p)
                elif ch != SP:
                    if len(self.args) >= self._max_arguments:
                        return self._invalid(buffer, p)
                    self._arg_start = p
                    state = _VerbState.ARGUMENT
            elif state is _VerbState.ARGUMENT:
                if ch in (CR, LF) or (ch == SP and self.command not in self._keeps_spaces):
                    self.args.append(bytes(data[self._arg_start : p]))
                    self._arguments_end = p
                    if ch == LF:
                        return self._done(buffer, p)
                    state = _VerbState.ALMOST_DONE if ch == CR else _VerbState.SPACES_BEFORE_ARGUMENT
                else:
                    keeps_spaces = self.command in self._keeps_spaces
                    p = skip_run(_LINE_RUN if keeps_spaces else _ARGUMENT_RUN, data, p)
                    continue
            elif state is _VerbState.ALMOST_DONE:
                if ch != LF:
                    return self._invalid(buffer, p)
                return self._done(buffer, p)
            p += 1
        buffer.pos = p
        self.state = state
        return ParseResult.AGAIN

    def _done(self, buffer: ClientBuffer, lf: int) -> ParseResult:
        buffer.pos = lf + 1
        if self.command is self._continued_by:
            self.state = _VerbState.ARGUMENT
            self._arg_start = buffer.pos
        else:
            self.state = _VerbState.START
        return ParseResult.COMMAND

    def _invalid(self, buffer: ClientBuffer, p: int) -> ParseResult:
        lf = buffer.data.find(b"\n", p)
        if lf < 0:
            self.state = _VerbState.INVALID
            buffer.pos = len(buffer.data)
            return ParseResult.AGAIN
        self.state = _VerbState.START
        buffer.pos = lf + 1
        return ParseResult.INVALID
