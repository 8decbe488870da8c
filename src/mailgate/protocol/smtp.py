"""SMTP before authentication, as nginx answers it: HELO/EHLO, AUTH, STARTTLS, MAIL/RCPT, RSET, NOOP, QUIT.

Verbs are four letters (or STARTTLS); at most eleven arguments. With `smtp_auth none` a client submits
without AUTH: MAIL is stored and RCPT starts authentication with method `none`. The client-hostname
lookup and `smtp_greeting_delay` are the session's (I/O); `rejected_before_greeting` gives the answer to a
client that talked during the delay.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from mailgate.config.model import Protocol, ServerConfig, SmtpAuth
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.engine import ParseResult, PerServer, PreAuthEngine, VerbParser
from mailgate.protocol.lines import CERT_ERROR, INTERNAL_ERROR, NO_CERT
from mailgate.protocol.sasl import SaslDone, SaslExchange, SaslPrompt, SaslStep

_OK = b"250 2.0.0 OK\r\n"
_BYE = b"221 2.0.0 Bye\r\n"
_START_TLS = b"220 2.0.0 Start TLS\r\n"
_INVALID = b"500 5.5.1 Invalid command\r\n"
_INVALID_ARGUMENT = b"501 5.5.4 Invalid argument\r\n"
_AUTH_REQUIRED = b"530 5.7.1 Authentication required\r\n"
_BAD_SEQUENCE = b"503 5.5.1 Bad sequence of commands\r\n"
_INVALID_PIPELINING = b"503 5.5.0 Improper use of SMTP command pipelining\r\n"
_DEFAULT_AUTH_ERROR_CODE = b"535 5.7.0"
_MAX_ARGUMENTS = 11

_AUTH_MECHANISMS = (
    (SmtpAuth.PLAIN, b"PLAIN"),
    (SmtpAuth.LOGIN, b"LOGIN"),
    (SmtpAuth.CRAM_MD5, b"CRAM-MD5"),
    (SmtpAuth.EXTERNAL, b"EXTERNAL"),
)


class SmtpCommand(Enum):
    HELO = b"HELO"
    EHLO = b"EHLO"
    QUIT = b"QUIT"
    AUTH = b"AUTH"
    NOOP = b"NOOP"
    MAIL = b"MAIL"
    RSET = b"RSET"
    RCPT = b"RCPT"
    VRFY = b"VRFY"
    EXPN = b"EXPN"
    HELP = b"HELP"
    STARTTLS = b"STARTTLS"


def _multiline_250(items: list[bytes]) -> bytes:
    """`250-a`, `250-b`, ..., `250 last`."""
    return b"".join(
        b"250" + (b" " if i == len(items) - 1 else b"-") + item + b"\r\n" for i, item in enumerate(items)
    )


def _shown(data: bytes) -> bytes:
    """Client bytes as nginx quotes them in `client was rejected` messages: CR and LF become `_`."""
    return data.replace(b"\r", b"_").replace(b"\n", b"_")


_VERBS = {command.value: command for command in SmtpCommand}


@dataclass(frozen=True)
class _SmtpLines:
    """A server's greeting, HELO reply and EHLO replies (one per TLS state)."""

    greeting: bytes
    helo_reply: bytes
    capability: bytes
    starttls_capability: bytes
    starttls_only_capability: bytes


def _smtp_lines(server: ServerConfig) -> _SmtpLines:
    name = server.core.server_name.encode()
    capabilities = [cap.encode() for cap in server.smtp.capabilities]
    mechanisms = [mechanism for method, mechanism in _AUTH_MECHANISMS if method in server.smtp.auth]
    auth = [b" ".join([b"AUTH", *mechanisms])] if mechanisms else []
    return _SmtpLines(
        greeting=b"220 " + name + b" ESMTP ready\r\n",
        helo_reply=b"250 " + name + b"\r\n",
        capability=_multiline_250([name, *capabilities, *auth]),
        starttls_capability=_multiline_250([name, *capabilities, *auth, b"STARTTLS"]),
        starttls_only_capability=_multiline_250([name, *capabilities, b"STARTTLS"]),
    )


_LINES = PerServer(_smtp_lines)


class SmtpPreAuth(PreAuthEngine):
    """One SMTP client before authentication (see `PreAuthEngine` for the driving protocol)."""

    __slots__ = ("_auth_none", "_esmtp", "_helo", "_lines", "_mail_from", "_parser", "_rcpt_to", "_sasl")

    internal_error_line: ClassVar[bytes] = INTERNAL_ERROR[Protocol.SMTP]
    cert_error_line: ClassVar[bytes] = CERT_ERROR[Protocol.SMTP]
    no_cert_line: ClassVar[bytes] = NO_CERT[Protocol.SMTP]

    def __init__(self, server: ServerConfig, *, tls_active: bool, salt: bytes | None = None) -> None:
        super().__init__(server, tls_active=tls_active, salt=salt, buffer_size=server.smtp.client_buffer)
        self._parser = VerbParser(_VERBS, max_arguments=_MAX_ARGUMENTS, continued_by=SmtpCommand.AUTH)
        enabled = server.smtp.auth
        self._auth_none = SmtpAuth.NONE in enabled
        self._sasl = SaslExchange(
            cram_md5=SmtpAuth.CRAM_MD5 in enabled,
            external=SmtpAuth.EXTERNAL in enabled,
        )
        self._helo = b""
        self._esmtp = False
        self._mail_from = b""
        self._rcpt_to = b""
        self._lines = _LINES(server)

    def greeting(self) -> bytes:
        return self._lines.greeting

    def auth_failed(self, text: bytes, smtp_code: bytes | None = None) -> bytes:
        self._sasl.reset()
        self._resume_after_rejection()
        return (smtp_code or _DEFAULT_AUTH_ERROR_CODE) + b" " + text + b"\r\n"

    def rejected_before_greeting(self, data: bytes) -> bytes:
        """The client sent `data` during `smtp_greeting_delay`: the line to send before closing.

        `next_event` then gives nginx's log message and `Close`.
        """
        shown = _shown(data[: self._buffer.capacity])
        self._log(b'client was rejected before greeting: "' + shown + b'"')
        self._closing("pipelining before greeting")
        return _INVALID_PIPELINING

    def _ehlo_reply(self) -> bytes:
        """The EHLO capability block for the current TLS state."""
        if self._starttls_offered:
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
        parser = self._parser
        args = parser.args
        if self._sasl.active:
            self._sasl_step(self._sasl.respond(args[0] if args else b""))
            return
        command = parser.command
        if command in (SmtpCommand.HELO, SmtpCommand.EHLO):
            self._hello(command, args)
        elif command is SmtpCommand.AUTH:
            if self._starttls_only:
                self._answer_invalid()
            elif not args:
                parser.expect_command()
                self._answer(_INVALID_ARGUMENT)
            else:
                self._sasl_step(self._sasl.start(args, self._session_salt))
        elif command is SmtpCommand.QUIT:
            self._answer(_BYE)
            self._closing("quit")
        elif command is SmtpCommand.MAIL:
            self._mail(args)
        elif command is SmtpCommand.RCPT:
            self._rcpt(args)
        elif command is SmtpCommand.RSET:
            self._mail_from = self._rcpt_to = b""
            self._answer(_OK)
        elif command is SmtpCommand.NOOP:
            self._answer(_OK)
        elif command is SmtpCommand.STARTTLS and self._starttls_offered:
            # RFC 3207: forget everything the client said before TLS.
            self._helo = self._mail_from = self._rcpt_to = b""
            self._answer(_START_TLS)
            self._start_tls()
        else:
            self._answer_invalid()

    def _hello(self, command: SmtpCommand, args: list[bytes]) -> None:
        if len(args) != 1:
            self._answer(_INVALID_ARGUMENT)
            return
        self._helo = args[0]
        self._mail_from = self._rcpt_to = b""
        if command is SmtpCommand.HELO:
            self._answer(self._lines.helo_reply)
        else:
            self._esmtp = True
            self._answer(self._ehlo_reply())

    def _mail(self, args: list[bytes]) -> None:
        if not self._auth_none:
            self._log(b'client was rejected: "' + _shown(self._buffer.contents()) + b'"')
            self._answer(_AUTH_REQUIRED)
        elif self._mail_from:
            self._answer(_BAD_SEQUENCE)
        elif not args:
            self._answer(_INVALID_ARGUMENT)
        else:
            self._mail_from = self._parser.command_text(self._buffer)
            self._answer(_OK)

    def _rcpt(self, args: list[bytes]) -> None:
        if not self._mail_from:
            self._answer(_BAD_SEQUENCE)
        elif not args:
            self._answer(_INVALID_ARGUMENT)
        else:
            self._rcpt_to = self._parser.command_text(self._buffer)
            self._authenticate_with(AuthMethod.NONE, b"", b"", None)

    def _sasl_step(self, step: SaslStep) -> None:
        if isinstance(step, SaslPrompt):
            self._answer(b"334 " + step.challenge + b"\r\n")
        elif isinstance(step, SaslDone):
            self._authenticate_with(step.method, step.login, step.password, step.salt)
        else:
            if step.log is not None:
                self._log(step.log)
            self._answer_invalid()

    def _authenticate_with(
        self, method: AuthMethod, login: bytes, password: bytes, salt: bytes | None
    ) -> None:
        self._parser.args = []
        self._parser.expect_command()
        submission = method is AuthMethod.NONE
        credentials = Credentials(
            protocol=Protocol.SMTP,
            method=method,
            login=login,
            password=password,
            salt=salt,
            smtp_helo=self._helo,
            smtp_esmtp=self._esmtp,
            smtp_from=self._mail_from if submission else b"",
            smtp_to=self._rcpt_to if submission else b"",
        )
        self._authenticate(credentials)

    def _answer_invalid(self) -> None:
        """`500 5.5.1 Invalid command`; any SASL exchange is abandoned."""
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
