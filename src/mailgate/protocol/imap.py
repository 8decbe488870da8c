"""IMAP before authentication, as nginx answers it: CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE.

Tags are 1-32 characters of `A-Z a-z 0-9 - . _`; at most three arguments, each an atom, a quoted string
(backslash escapes) or a literal (`{N}` answered with `+ OK`, `{N+}` not answered). Where nginx's parser
has bugs this one does not copy them; docs/quirks.md lists each decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from mailgate.config.model import ImapAuth, Protocol, ServerConfig
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.engine import (
    CR,
    LETTER_RUN,
    LETTERS,
    LF,
    SP,
    ClientBuffer,
    ParseResult,
    PerServer,
    PreAuthEngine,
    skip_run,
)
from mailgate.protocol.lines import CERT_ERROR, INTERNAL_ERROR, NO_CERT
from mailgate.protocol.sasl import SaslDone, SaslExchange, SaslPrompt, SaslStep

_TAG_CHARACTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._")
# Runs of bytes that leave the parser in its state, skipped in one step (see ImapParser.parse).
_TAG_RUN = re.compile(rb"[A-Za-z0-9._-]*")
_ATOM_RUN = re.compile(rb"[^ \r\n]*")
_QUOTED_RUN = re.compile(rb'[^"\\\r\n]*')
_MAX_TAG_LENGTH = 32
_MAX_ARGUMENTS = 3
# A tag, a command, at most three atoms or quoted strings without escapes, no literal, then the line end.
_SIMPLE_LINE = re.compile(
    rb'([A-Za-z0-9._-]{1,32}) +([A-Za-z]+)((?: +(?:"[^"\\\r\n]*"|[^ "{\r\n][^ \r\n]*)){0,3}) *\r?\n'
)
_SIMPLE_ARGUMENT = re.compile(rb'"([^"]*)"|([^ ]+)')
# The literal length must fit nginx's counter (a 64-bit size); beyond it the command is a syntax error.
_MAX_LITERAL_LENGTH = 2**64 - 1

_UNTAGGED = b"* "
_OK = b"OK completed\r\n"
_BAD = b"BAD invalid command\r\n"
_LITERAL_CONTINUATION = b"+ OK\r\n"
_BYE = b"* BYE\r\n"

# Fixed order of the AUTH= items in CAPABILITY, whatever the order in `imap_auth`.
_AUTH_CAPABILITIES = (
    (ImapAuth.PLAIN, b"AUTH=PLAIN"),
    (ImapAuth.LOGIN, b"AUTH=LOGIN"),
    (ImapAuth.CRAM_MD5, b"AUTH=CRAM-MD5"),
    (ImapAuth.EXTERNAL, b"AUTH=EXTERNAL"),
)


class ImapCommand(Enum):
    NOOP = b"NOOP"
    LOGIN = b"LOGIN"
    LOGOUT = b"LOGOUT"
    STARTTLS = b"STARTTLS"
    CAPABILITY = b"CAPABILITY"
    AUTHENTICATE = b"AUTHENTICATE"


_COMMANDS = {command.value: command for command in ImapCommand}


class _State(Enum):
    START = 0
    TAG = 1
    INVALID = 2
    SPACES_BEFORE_COMMAND = 3
    COMMAND = 4
    SPACES_BEFORE_ARGUMENT = 5
    ARGUMENT = 6
    BACKSLASH = 7
    LITERAL = 8
    NO_SYNC_LITERAL = 9
    START_LITERAL_ARGUMENT = 10
    LITERAL_ARGUMENT = 11
    END_LITERAL_ARGUMENT = 12
    ALMOST_DONE = 13


class ImapParser:
    """nginx's IMAP command parser, resumable at any byte boundary.

    After `COMMAND`, `tag` (with its trailing space, b"" if none), `command` and `args` describe the
    command. An `AUTHENTICATE` leaves the parser reading continuation lines as bare arguments (each line's
    tokens in `args`) until `expect_command` is called.
    """

    __slots__ = (
        "_arg_start",
        "_backslash",
        "_command_start",
        "_literal_digits",
        "_literal_length",
        "_no_sync_literal",
        "_quoted",
        "_tag_start",
        "args",
        "close_after_invalid",
        "command",
        "state",
        "tag",
    )

    def __init__(self) -> None:
        self.state = _State.START
        self.tag = b""
        self.command: ImapCommand | None = None
        self.args: list[bytes] = []
        self.close_after_invalid = False
        self._tag_start = 0
        self._command_start = 0
        self._arg_start = 0
        self._quoted = False
        self._backslash = False
        self._literal_length = 0
        self._literal_digits = 0
        self._no_sync_literal = False

    def expect_command(self) -> None:
        """The next line is a new tagged command (after an invalid line or a finished exchange)."""
        self.state = _State.START

    def forget_tag(self) -> None:
        self.tag = b""

    def parse(self, buffer: ClientBuffer) -> ParseResult:
        if self.state is _State.START:
            # A whole plain command line (what clients send): read by one expression, with the same result
            # the state machine gives it (tests/protocol/test_imap.py checks the two agree).
            simple = _SIMPLE_LINE.match(buffer.data, buffer.pos)
            if simple is not None:
                command = _COMMANDS.get(simple[2].upper())
                if command is not None and command is not ImapCommand.AUTHENTICATE:
                    self.tag = simple[1] + b" "
                    self.command = command
                    self.args.extend(quoted or atom for quoted, atom in _SIMPLE_ARGUMENT.findall(simple[3]))
                    buffer.pos = simple.end()
                    return ParseResult.COMMAND
        return self._parse_by_state(buffer)

    def _parse_by_state(self, buffer: ClientBuffer) -> ParseResult:
        """nginx's state machine, byte by byte (runs of ordinary bytes in one step)."""
        data = buffer.data
        last = len(data)
        p = buffer.pos
        state = self.state
        while p < last:
            ch = data[p]
            if state is _State.START:
                self._tag_start = p
                state = _State.TAG
            if state is _State.TAG:
                if ch == SP:
                    if p == self._tag_start:
                        return self._invalid(buffer, p)
                    self.tag = bytes(data[self._tag_start : p + 1])
                    state = _State.SPACES_BEFORE_COMMAND
                elif ch not in _TAG_CHARACTERS or p - self._tag_start >= _MAX_TAG_LENGTH:
                    return self._invalid(buffer, p)
                else:
                    p = skip_run(_TAG_RUN, data, p)
                    if p - self._tag_start > _MAX_TAG_LENGTH:
                        return self._invalid(buffer, p)  # no LF in the run: where it is cut does not matter
                    continue
            elif state is _State.INVALID:
                return self._invalid(buffer, p)
            elif state is _State.SPACES_BEFORE_COMMAND:
                if ch in (CR, LF):
                    return self._invalid(buffer, p)
                if ch != SP:
                    self._command_start = p
                    state = _State.COMMAND
            elif state is _State.COMMAND:
                if ch in (SP, CR, LF):
                    command = _COMMANDS.get(bytes(data[self._command_start : p]).upper())
                    if command is None:
                        return self._invalid(buffer, p)
                    self.command = command
                    if ch == LF:
                        return self._done(buffer, p)
                    state = _State.SPACES_BEFORE_ARGUMENT if ch == SP else _State.ALMOST_DONE
                elif ch not in LETTERS:
                    return self._invalid(buffer, p)
                else:
                    p = skip_run(LETTER_RUN, data, p)
                    continue
            elif state is _State.SPACES_BEFORE_ARGUMENT:
                if ch == CR:
                    state = _State.ALMOST_DONE
                elif ch == LF:
                    return self._done(buffer, p)
                elif ch != SP:
                    if len(self.args) >= _MAX_ARGUMENTS:
                        return self._invalid(buffer, p)
                    if ch == ord('"'):
                        self._quoted = True
                        self._arg_start = p + 1
                        state = _State.ARGUMENT
                    elif ch == ord("{"):
                        self._literal_length = 0
                        self._literal_digits = 0
                        state = _State.LITERAL
                    else:
                        self._arg_start = p
                        state = _State.ARGUMENT
            elif state is _State.ARGUMENT:
                if ch == SP and self._quoted:
                    pass
                elif ch in (SP, CR, LF) or (ch == ord('"') and self._quoted):
                    self._push_argument(data, p)
                    if ch == LF:
                        return self._done(buffer, p)
                    state = _State.ALMOST_DONE if ch == CR else _State.SPACES_BEFORE_ARGUMENT
                elif ch == ord("\\") and self._quoted:
                    self._backslash = True
                    state = _State.BACKSLASH
                else:
                    p = skip_run(_QUOTED_RUN if self._quoted else _ATOM_RUN, data, p)
                    continue
            elif state is _State.BACKSLASH:
                if ch in (CR, LF):
                    return self._invalid(buffer, p)
                state = _State.ARGUMENT
            elif state is _State.LITERAL:
                if 0x30 <= ch <= 0x39:
                    self._literal_length = self._literal_length * 10 + (ch - 0x30)
                    self._literal_digits += 1
                    if self._literal_length > _MAX_LITERAL_LENGTH:
                        return self._invalid(buffer, p)
                elif ch == ord("}") and self._literal_digits:
                    state = _State.START_LITERAL_ARGUMENT
                elif ch == ord("+") and self._literal_digits:
                    state = _State.NO_SYNC_LITERAL
                else:
                    return self._invalid(buffer, p)
            elif state is _State.NO_SYNC_LITERAL:
                if ch != ord("}"):
                    return self._invalid(buffer, p)
                self._no_sync_literal = True
                state = _State.START_LITERAL_ARGUMENT
            elif state is _State.START_LITERAL_ARGUMENT:
                if ch == LF:
                    buffer.pos = p + 1
                    self._arg_start = p + 1
                    synchronizing = not self._no_sync_literal
                    self._no_sync_literal = False
                    if self._literal_length == 0:
                        self.args.append(b"")
                        state = _State.END_LITERAL_ARGUMENT
                    else:
                        state = _State.LITERAL_ARGUMENT
                    if synchronizing:
                        self.state = state
                        return ParseResult.LITERAL
                elif ch != CR:
                    return self._invalid(buffer, p)
            elif state is _State.LITERAL_ARGUMENT:
                taken = min(self._literal_length, last - p)
                self._literal_length -= taken
                p += taken
                if self._literal_length == 0:
                    self.args.append(bytes(data[self._arg_start : p]))
                    state = _State.END_LITERAL_ARGUMENT
                continue
            elif state is _State.END_LITERAL_ARGUMENT:
                if ch == LF:
                    return self._done(buffer, p)
                if ch == SP:
                    state = _State.SPACES_BEFORE_ARGUMENT
                elif ch == CR:
                    state = _State.ALMOST_DONE
                else:
                    return self._invalid(buffer, p)
            elif state is _State.ALMOST_DONE:
                if ch != LF:
                    return self._invalid(buffer, p)
                return self._done(buffer, p)
            p += 1
        buffer.pos = p
        self.state = state
        return ParseResult.AGAIN

    def _push_argument(self, data: bytearray, end: int) -> None:
        argument = bytes(data[self._arg_start : end])
        if self._backslash:
            argument = _unescape(argument)
        self.args.append(argument)
        self._quoted = False
        self._backslash = False

    def _done(self, buffer: ClientBuffer, lf: int) -> ParseResult:
        buffer.pos = lf + 1
        self._quoted = False
        self._backslash = False
        if self.command is ImapCommand.AUTHENTICATE:
            self.state = _State.ARGUMENT
            self._arg_start = buffer.pos
        else:
            self.state = _State.START
        return ParseResult.COMMAND

    def _invalid(self, buffer: ClientBuffer, p: int) -> ParseResult:
        """Skip to the end of the line; a line announcing `{N+}` means its literal can't be skipped safely."""
        self.state = _State.INVALID
        self._quoted = False
        self._backslash = False
        self._no_sync_literal = False
        self._literal_length = 0
        data = buffer.data
        lf = data.find(b"\n", p)
        if lf < 0:
            buffer.pos = len(data)
            return ParseResult.AGAIN
        self.state = _State.START
        buffer.pos = lf + 1
        end = lf - 1 if data[lf - 1] == CR else lf
        # nginx looks only past the buffer's first four bytes.
        self.close_after_invalid = lf > 4 and data[end - 2 : end] == b"+}"
        return ParseResult.INVALID


def _unescape(quoted: bytes) -> bytes:
    """`\\x` stands for `x` inside a quoted string."""
    out = bytearray()
    escaped = False
    for byte in quoted:
        if byte == ord("\\") and not escaped:
            escaped = True
            continue
        out.append(byte)
        escaped = False
    return bytes(out)


@dataclass(frozen=True)
class _ImapLines:
    """A server's `* CAPABILITY` lines, one per TLS state."""

    capability: bytes
    starttls_capability: bytes
    starttls_only_capability: bytes


def _imap_lines(server: ServerConfig) -> _ImapLines:
    names = b"".join(b" " + name for name in (cap.encode() for cap in server.imap.capabilities))
    auth = b"".join(b" " + item for method, item in _AUTH_CAPABILITIES if method in server.imap.auth)
    return _ImapLines(
        capability=b"* CAPABILITY" + names + auth + b"\r\n",
        starttls_capability=b"* CAPABILITY" + names + auth + b" STARTTLS\r\n",
        starttls_only_capability=b"* CAPABILITY" + names + b" STARTTLS LOGINDISABLED\r\n",
    )


_LINES = PerServer(_imap_lines)


class ImapPreAuth(PreAuthEngine):
    """One IMAP client before authentication (see `PreAuthEngine` for the driving protocol)."""

    __slots__ = ("_lines", "_parser", "_sasl")

    internal_error_line: ClassVar[bytes] = INTERNAL_ERROR[Protocol.IMAP]
    cert_error_line: ClassVar[bytes] = CERT_ERROR[Protocol.IMAP]
    no_cert_line: ClassVar[bytes] = NO_CERT[Protocol.IMAP]

    def __init__(self, server: ServerConfig, *, tls_active: bool, salt: bytes | None = None) -> None:
        super().__init__(server, tls_active=tls_active, salt=salt, buffer_size=server.imap.client_buffer)
        self._parser = ImapParser()
        enabled = server.imap.auth
        self._sasl = SaslExchange(
            cram_md5=ImapAuth.CRAM_MD5 in enabled,
            external=ImapAuth.EXTERNAL in enabled,
        )
        self._lines = _LINES(server)

    def greeting(self) -> bytes:
        return b"* OK IMAP4 ready\r\n"

    @property
    def greeting_is_constant(self) -> bool:
        return True

    def auth_failed(self, text: bytes, smtp_code: bytes | None = None) -> bytes:
        line = (self._parser.tag or _UNTAGGED) + b"NO " + text + b"\r\n"
        self._parser.forget_tag()
        self._sasl.reset()
        self._resume_after_rejection()
        return line

    def _capability_line(self) -> bytes:
        """The `* CAPABILITY` line for the current TLS state."""
        if self._starttls_offered:
            if self._starttls_only:
                return self._lines.starttls_only_capability
            return self._lines.starttls_capability
        return self._lines.capability

    def _parse(self) -> ParseResult:
        return self._parser.parse(self._buffer)

    def _handle(self, result: ParseResult) -> None:
        parser = self._parser
        if result is ParseResult.LITERAL:
            self._reply(_LITERAL_CONTINUATION)
            return
        if result is ParseResult.INVALID:
            self._answer_invalid()
            if parser.close_after_invalid:
                parser.close_after_invalid = False
                self._closing("non-synchronizing literal in an invalid command")
            return
        if self._sasl.active:
            self._sasl_step(self._sasl.respond(parser.args[0] if parser.args else b""))
            return
        command = parser.command
        if command is ImapCommand.LOGIN:
            self._login()
        elif command is ImapCommand.AUTHENTICATE:
            if self._starttls_only:
                self._answer_invalid()
            else:
                self._sasl_step(self._sasl.start(parser.args, self._session_salt))
        elif command is ImapCommand.CAPABILITY:
            self._answer_tagged(self._capability_line() + parser.tag + _OK)
        elif command is ImapCommand.LOGOUT:
            self._answer_tagged(_BYE + parser.tag + _OK)
            self._closing("logout")
        elif command is ImapCommand.NOOP:
            self._answer_tagged(parser.tag + _OK)
        elif command is ImapCommand.STARTTLS and self._starttls_offered:
            self._answer_tagged(parser.tag + _OK)
            self._start_tls()
        else:
            self._answer_invalid()

    def _login(self) -> None:
        args = self._parser.args
        if self._starttls_only or len(args) != 2 or not args[0]:
            self._answer_invalid()
            return
        self._authenticate_with(AuthMethod.PLAIN, args[0], args[1], None)

    def _sasl_step(self, step: SaslStep) -> None:
        if isinstance(step, SaslPrompt):
            self._reply(b"+ " + step.challenge + b"\r\n")
            self._parser.args = []
        elif isinstance(step, SaslDone):
            self._authenticate_with(step.method, step.login, step.password, step.salt)
        else:
            if step.log is not None:
                self._log(step.log)
            self._answer_invalid()

    def _authenticate_with(
        self, method: AuthMethod, login: bytes, password: bytes, salt: bytes | None
    ) -> None:
        parser = self._parser
        parser.args = []
        parser.expect_command()
        credentials = Credentials(
            protocol=Protocol.IMAP,
            method=method,
            login=login,
            password=password,
            salt=salt,
            imap_tag=parser.tag[:-1],
        )
        self._authenticate(credentials)

    def _answer_invalid(self) -> None:
        """`<tag> BAD invalid command`, untagged without a valid tag; any SASL exchange is abandoned."""
        self._sasl.reset()
        self._parser.expect_command()
        self._answer_tagged((self._parser.tag or _UNTAGGED) + _BAD)

    def _answer_tagged(self, reply: bytes) -> None:
        """Queue a command's final reply; the next line starts a new command."""
        self._reply(reply)
        self._parser.args = []
        self._parser.forget_tag()
        self._buffer.rewind_if_consumed()
