"""POP3 before authentication, as nginx answers it: USER/PASS, APOP, AUTH, CAPA, STLS, NOOP, QUIT.

Commands are exactly four letters; at most three arguments; the USER and PASS argument runs to the end
of the line with its spaces. The input buffer is always 128 bytes (`pop3_client_buffer` does not exist),
so a long `AUTH PLAIN <initial response>` or APOP line ends the session as a too-long command.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from mailgate.config.model import Pop3Auth, Protocol, ServerConfig
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.engine import ParseResult, PerServer, PreAuthEngine, VerbParser
from mailgate.protocol.lines import CERT_ERROR, INTERNAL_ERROR, NO_CERT
from mailgate.protocol.sasl import SaslDone, SaslExchange, SaslPrompt, SaslStep

_OK = b"+OK\r\n"
_INVALID = b"-ERR invalid command\r\n"
_MAX_ARGUMENTS = 3


class Pop3Command(Enum):
    USER = b"USER"
    PASS = b"PASS"
    APOP = b"APOP"
    QUIT = b"QUIT"
    CAPA = b"CAPA"
    AUTH = b"AUTH"
    NOOP = b"NOOP"
    STLS = b"STLS"


def _sasl_mechanisms(enabled: frozenset[Pop3Auth]) -> list[bytes]:
    """SASL names in nginx's fixed order; `plain` enables both PLAIN and LOGIN, APOP is not SASL."""
    names: list[bytes] = []
    if Pop3Auth.PLAIN in enabled:
        names += [b"PLAIN", b"LOGIN"]
    if Pop3Auth.CRAM_MD5 in enabled:
        names.append(b"CRAM-MD5")
    if Pop3Auth.EXTERNAL in enabled:
        names.append(b"EXTERNAL")
    return names


_LINE_BREAKS = frozenset(b"\r\n")
_VERBS = {command.value: command for command in Pop3Command}
_KEEPS_SPACES = frozenset({Pop3Command.USER, Pop3Command.PASS})


@dataclass(frozen=True)
class _Pop3Lines:
    """A server's CAPA replies, one per TLS state, and its `AUTH` mechanism list."""

    capability: bytes
    starttls_capability: bytes
    starttls_only_capability: bytes
    methods: bytes


def _pop3_lines(server: ServerConfig) -> _Pop3Lines:
    capabilities = [cap.encode() for cap in server.pop3.capabilities]
    mechanisms = _sasl_mechanisms(server.pop3.auth)
    header = b"+OK Capability list follows\r\n"
    listed = b"".join(cap + b"\r\n" for cap in capabilities)
    sasl = b" ".join([b"SASL", *mechanisms]) + b"\r\n"
    without_user = b"".join(cap + b"\r\n" for cap in capabilities if cap.upper() != b"USER")
    return _Pop3Lines(
        capability=header + listed + sasl + b".\r\n",
        starttls_capability=header + listed + sasl + b"STLS\r\n.\r\n",
        starttls_only_capability=header + without_user + b"STLS\r\n.\r\n",
        methods=b"+OK methods supported:\r\n" + b"".join(m + b"\r\n" for m in mechanisms) + b".\r\n",
    )


_LINES = PerServer(_pop3_lines)


class Pop3PreAuth(PreAuthEngine):
    """One POP3 client before authentication (see `PreAuthEngine` for the driving protocol).

    With `apop` or `cram-md5` enabled the greeting carries the session's salt: pass the caller's `salt`
    (from `make_salt`), or the engine makes one.
    """

    __slots__ = ("_apop", "_lines", "_parser", "_salted", "_sasl", "_user")

    internal_error_line: ClassVar[bytes] = INTERNAL_ERROR[Protocol.POP3]
    cert_error_line: ClassVar[bytes] = CERT_ERROR[Protocol.POP3]
    no_cert_line: ClassVar[bytes] = NO_CERT[Protocol.POP3]
    buffer_size: ClassVar[int] = 128

    def __init__(self, server: ServerConfig, *, tls_active: bool, salt: bytes | None = None) -> None:
        super().__init__(server, tls_active=tls_active, salt=salt, buffer_size=self.buffer_size)
        self._parser = VerbParser(
            _VERBS, max_arguments=_MAX_ARGUMENTS, continued_by=Pop3Command.AUTH, keeps_spaces=_KEEPS_SPACES
        )
        enabled = server.pop3.auth
        self._salted = bool(enabled & {Pop3Auth.APOP, Pop3Auth.CRAM_MD5})
        self._apop = Pop3Auth.APOP in enabled
        self._sasl = SaslExchange(
            cram_md5=Pop3Auth.CRAM_MD5 in enabled,
            external=Pop3Auth.EXTERNAL in enabled,
        )
        self._user: bytes | None = None  # set between USER and PASS
        self._lines = _LINES(server)

    @property
    def greeting_is_constant(self) -> bool:
        return not self._salted

    def greeting(self) -> bytes:
        if self._salted:
            return b"+OK POP3 ready " + self._session_salt() + b"\r\n"
        return b"+OK POP3 ready\r\n"

    def auth_failed(self, text: bytes, smtp_code: bytes | None = None) -> bytes:
        self._user = None
        self._sasl.reset()
        self._resume_after_rejection()
        return b"-ERR " + text + b"\r\n"

    def _capability_list(self, *, after_user: bool) -> bytes:
        """The CAPA reply for the current TLS state; after USER it never offers STLS."""
        if self._starttls_offered and not after_user:
            if self._starttls_only:
                return self._lines.starttls_only_capability
            return self._lines.starttls_capability
        return self._lines.capability

    def _parse(self) -> ParseResult:
        return self._parser.parse(self._buffer)

    def _handle(self, result: ParseResult) -> None:
        if result is not ParseResult.COMMAND:
            self._answer_invalid()
            return
        args = self._parser.args
        if self._sasl.active:
            self._sasl_step(self._sasl.respond(args[0] if args else b""))
            return
        command = self._parser.command
        if command is Pop3Command.QUIT:
            self._answer(_OK)
            self._closing("quit")
        elif command is Pop3Command.NOOP:
            self._answer(_OK)
        elif command is Pop3Command.CAPA:
            self._answer(self._capability_list(after_user=self._user is not None))
        elif self._user is not None:
            if command is Pop3Command.PASS and len(args) == 1:
                self._authenticate_with(AuthMethod.PLAIN, self._user, args[0], None)
            else:
                self._answer_invalid()
        elif command is Pop3Command.USER and not self._starttls_only and len(args) == 1:
            self._user = args[0]
            self._answer(_OK)
        elif command is Pop3Command.APOP and not self._starttls_only and len(args) == 2 and self._apop:
            self._authenticate_with(AuthMethod.APOP, args[0], args[1], self._session_salt())
        elif command is Pop3Command.AUTH and not self._starttls_only:
            if args:
                self._sasl_step(self._sasl.start(args, self._session_salt))
            else:
                self._parser.expect_command()
                self._answer(self._lines.methods)
        elif command is Pop3Command.STLS and self._starttls_offered:
            self._answer(_OK)
            self._start_tls()
        else:
            self._answer_invalid()

    def _sasl_step(self, step: SaslStep) -> None:
        if isinstance(step, SaslPrompt):
            self._answer(b"+ " + step.challenge + b"\r\n")
        elif isinstance(step, SaslDone):
            if _LINE_BREAKS.intersection(step.login + step.password):
                # The backend login sends `USER <login>` and `PASS <password>` as lines: a decoded CR or
                # LF would let the client inject POP3 commands there (nginx passes them on; we refuse).
                self._log(b"client sent a login or password with a line break in AUTH command")
                self._answer_invalid()
                return
            self._authenticate_with(step.method, step.login, step.password, step.salt)
        else:
            if step.log is not None:
                self._log(step.log)
            self._answer_invalid()

    def _authenticate_with(
        self, method: AuthMethod, login: bytes, password: bytes, salt: bytes | None
    ) -> None:
        self._user = None
        self._parser.args = []
        self._parser.expect_command()
        self._authenticate(Credentials(Protocol.POP3, method, login=login, password=password, salt=salt))

    def _answer_invalid(self) -> None:
        """`-ERR invalid command`; back to the start state (a pending USER or SASL exchange is dropped)."""
        self._user = None
        self._sasl.reset()
        self._parser.expect_command()
        self._answer(_INVALID)

    def _answer(self, reply: bytes) -> None:
        self._reply(reply)
        parser = self._parser
        parser.args = []
        self._buffer.rewind_if_consumed()
        if parser.reading_continuation:
            parser.expect_continuation(self._buffer)
