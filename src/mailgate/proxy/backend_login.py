"""Logging in to the backend on the client's behalf (nginx's ngx_mail_proxy_module, before the relay).

Sans-I/O, one engine per protocol. The caller connects to the backend, sends the PROXY header if configured
(see `proxy_protocol.build_proxy_header`), then feeds every chunk it receives from the backend to
`receive_data` (`b""` at EOF) and acts on the events returned, in order:

* `Send(data)`: write `data` to the backend;
* `Done(client_bytes)`: the login succeeded; write `client_bytes` to the client first, then relay;
* `Failed(log_level, log_message, client_bytes)`: log (if `log_message`), write `client_bytes` to the
  client, close both connections.

`action` is nginx's log action at every moment (`while <action>` in log lines); it is None once logged in.
Replies are read as nginx reads them: into a `proxy_buffer`-sized buffer that is judged only when it holds
at least 4 bytes and ends with CRLF, judged on its first line (SMTP: after the last line of a multi-line
reply), and emptied after each step.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, NamedTuple

from mailgate.config.model import LogLevel, Protocol, ServerConfig
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.lines import INTERNAL_ERROR

_TIMED_OUT = f"{errno.ETIMEDOUT}: {os.strerror(errno.ETIMEDOUT)}"
SMTP_AUTH_OK = b"235 2.0.0 OK\r\n"


class UpstreamAction(StrEnum):
    """nginx's log actions while connecting to and logging in to the backend."""

    CONNECTING = "connecting to upstream"
    SENDING_PROXY_HEADER = "sending PROXY protocol header to upstream"
    READING_RESPONSE = "reading response from upstream"
    SENDING_USER = "sending user name to upstream"
    SENDING_PASSWORD = "sending password to upstream"
    SENDING_LOGIN = "sending LOGIN command to upstream"
    SENDING_HELO = "sending HELO/EHLO to upstream"
    SENDING_XCLIENT = "sending XCLIENT to upstream"
    SENDING_CLIENT_HELO = "sending client HELO/EHLO to upstream"
    SENDING_AUTH = "sending AUTH to upstream"
    SENDING_MAIL_FROM = "sending MAIL FROM to upstream"
    SENDING_RCPT_TO = "sending RCPT TO to upstream"


@dataclass(frozen=True)
class Send:
    """Bytes to write to the backend."""

    data: bytes


@dataclass(frozen=True)
class Done:
    """Logged in. `client_bytes` go to the client before anything else, including any bytes the backend
    sent after the reply that completed the login."""

    client_bytes: bytes


@dataclass(frozen=True)
class Failed:
    """The login failed: log `log_message` (None: nothing to log) at `log_level`, send `client_bytes`
    to the client, close."""

    log_level: LogLevel
    log_message: str | None
    client_bytes: bytes


BackendLoginEvent = Send | Done | Failed


class FinalReply(NamedTuple):
    """The login's last reply as the connection may accept it itself (`Relay.run_after_login`): by its
    first bytes, `prefix`; the client then gets the reply, or `replacement` in place of its first line
    (None: the reply as it is), as `Done` would give it."""

    prefix: bytes
    replacement: bytes | None


@dataclass(frozen=True)
class _Accepted:
    reply_end: int  # where the judged reply ends in the buffer


@dataclass(frozen=True)
class _Rejected:
    position: int  # where nginx's log text starts in the buffer


_Verdict = _Accepted | _Rejected | None  # None: wait for more data


@dataclass(frozen=True)
class _Step:
    """One exchange: the reply to judge and what follows an accepted reply."""

    expects: str  # protocol-specific name of the reply check
    then_send: bytes | None  # None: the login is complete
    action: UpstreamAction | None = None
    needs_password: bool = False  # `then_send` is None because no password is available


def _log_text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


class BackendLogin(ABC):
    """What the three protocol engines share: the reply buffer, judging, events and log actions."""

    protocol: Protocol

    def __init__(self, server: ServerConfig, steps: list[_Step]) -> None:
        self._capacity = server.proxy.buffer
        self._pass_error_message = server.proxy.pass_error_message
        self._steps = steps
        self._step_index = 0
        self._buffer = bytearray()
        self._finished = False
        self.action: str | None = UpstreamAction.CONNECTING

    @property
    def finished(self) -> bool:
        """True once `Done` or `Failed` was returned; the engine takes no more input."""
        return self._finished

    def receive_data(self, data: bytes) -> list[BackendLoginEvent]:
        """Feed bytes received from the backend (`b""` when it closed the connection)."""
        if self._finished:
            raise RuntimeError("backend login already finished")
        self.action = UpstreamAction.READING_RESPONSE
        if not data:
            return [self.fail(LogLevel.ERROR, None)]
        if not self._buffer and len(data) <= self._capacity:  # a whole reply in one read, as usual
            self._buffer += data
            event = self._judge_buffer(b"")
            return [] if event is None else [event]
        events: list[BackendLoginEvent] = []
        remaining = data
        while remaining:
            space = self._capacity - len(self._buffer)
            if space <= 0:
                # nginx would read into a full buffer, get 0 bytes and take it as the backend closing.
                events.append(self.fail(LogLevel.ERROR, None))
                return events
            self._buffer += remaining[:space]
            remaining = remaining[space:]
            event = self._judge_buffer(remaining)
            if event is not None:
                events.append(event)
                if not isinstance(event, Send):
                    return events
        return events

    def answers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The replies the connection may answer itself before this engine sees them (`Peer.exchange`):
        from the current step on, each step whose reply is accepted by its first bytes alone, as
        (those bytes, what to send then). A reply that does not start so comes here unjudged."""
        answers = []
        for step in self._steps[self._step_index :]:
            prefix = self._accepting_prefix(step.expects)
            if prefix is None or step.then_send is None or step.needs_password:
                break
            answers.append((prefix, step.then_send))
        return tuple(answers)

    def final_reply(self, answered: int) -> FinalReply | None:
        """How the connection may accept the login's last reply after answering the first `answered` of
        `answers()`: None unless those reach the last step and its reply is accepted by its first bytes."""
        if self._step_index + answered != len(self._steps) - 1:
            return None
        return self._final_reply(self._steps[-1].expects)

    def _final_reply(self, expects: str) -> FinalReply | None:
        return None

    def answered(self, count: int) -> None:
        """The connection answered the first `count` of `answers()`: this engine is where it would be had
        it judged those replies itself."""
        if count:
            self._step_index += count
            self.action = self._steps[self._step_index - 1].action
            self._buffer.clear()

    def _accepting_prefix(self, expects: str) -> bytes | None:
        """First bytes that are enough for `_judge` to accept a reply to the step; None: none are."""
        return None

    def fail(self, log_level: LogLevel, log_message: str | None) -> Failed:
        """End the login with the protocol's internal server error line (timeouts, I/O errors, EOF)."""
        self._finished = True
        return Failed(log_level, log_message, INTERNAL_ERROR[self.protocol])

    def timed_out(self) -> Failed:
        """The `timeout` read timer on the backend connection expired during the login."""
        return self.fail(LogLevel.INFO, f"upstream timed out ({_TIMED_OUT})")

    def _judge_buffer(self, unread: bytes) -> BackendLoginEvent | None:
        buffer = bytes(self._buffer)
        if len(buffer) < 4:
            return None
        if not buffer.endswith(b"\r\n"):
            if len(buffer) < self._capacity:
                return None
            text = _log_text(buffer[:-1].split(b"\x00", 1)[0])
            return self.fail(LogLevel.ERROR, f'upstream sent too long response line: "{text}"')
        step = self._steps[self._step_index]
        verdict = self._judge(buffer, step.expects)
        if verdict is None:
            return None
        if isinstance(verdict, _Rejected):
            return self._invalid_response(buffer, verdict.position)
        if step.needs_password:
            self.action = step.action
            return self.fail(LogLevel.ERROR, "no password available")
        if step.then_send is None:
            self._finished = True
            self.action = None
            return Done(self._client_bytes(buffer, verdict.reply_end) + unread)
        self.action = step.action
        self._step_index += 1
        self._buffer.clear()
        return Send(step.then_send)

    def _invalid_response(self, buffer: bytes, position: int) -> Failed:
        self._finished = True
        if not self._pass_error_message:
            text = _log_text(buffer[position:-2].split(b"\x00", 1)[0])
            return Failed(
                LogLevel.ERROR,
                f'upstream sent invalid response: "{text}"',
                INTERNAL_ERROR[self.protocol],
            )
        text = _log_text(buffer[position:-2])
        return Failed(LogLevel.INFO, f'upstream sent invalid response: "{text}"', buffer)

    @abstractmethod
    def _judge(self, buffer: bytes, expects: str) -> _Verdict:
        """Judge the buffer (at least 4 bytes, ending with CRLF) against the step's expected reply."""

    def _client_bytes(self, buffer: bytes, reply_end: int) -> bytes:
        """What the client gets first: by default the backend's whole final reply buffer."""
        return buffer


def _first_line_end(buffer: bytes, start: int = 0) -> int:
    """The position after the first CRLF at or after `start` (the buffer always ends with CRLF)."""
    return buffer.index(b"\r\n", start) + 2


class Pop3BackendLogin(BackendLogin):
    """`USER`/`PASS` towards the backend; the backend's `+OK` to `PASS` is the client's reply."""

    protocol = Protocol.POP3

    def __init__(self, server: ServerConfig, *, login: bytes, password: bytes | None) -> None:
        super().__init__(
            server,
            [
                _Step("+OK", b"USER " + login + b"\r\n", UpstreamAction.SENDING_USER),
                _Step(
                    "+OK",
                    None if password is None else b"PASS " + password + b"\r\n",
                    UpstreamAction.SENDING_PASSWORD,
                    needs_password=password is None,
                ),
                _Step("+OK", None),
            ],
        )

    def _judge(self, buffer: bytes, expects: str) -> _Verdict:
        return _Accepted(_first_line_end(buffer)) if buffer.startswith(b"+OK") else _Rejected(0)

    def _accepting_prefix(self, expects: str) -> bytes | None:
        return b"+OK"

    def _final_reply(self, expects: str) -> FinalReply | None:
        return FinalReply(b"+OK", None)


class ImapBackendLogin(BackendLogin):
    """`<tag> LOGIN` with synchronising literals and the client's own tag; the backend's final reply
    (one optional untagged line, then the tagged `OK`) is the client's reply."""

    protocol = Protocol.IMAP

    def __init__(
        self, server: ServerConfig, credentials: Credentials, login: bytes, password: bytes | None
    ) -> None:
        self._tag = credentials.imap_tag + b" "
        password_steps = [
            _Step(
                "+",
                None if password is None else password + b"\r\n",
                UpstreamAction.SENDING_PASSWORD,
                needs_password=password is None,
            ),
            _Step("tagged", None),
        ]
        super().__init__(
            server,
            [
                _Step("greeting", self._tag + b"LOGIN {%d}\r\n" % len(login), UpstreamAction.SENDING_LOGIN),
                _Step("+", login + b" {%d}\r\n" % len(password or b""), UpstreamAction.SENDING_USER),
                *password_steps,
            ],
        )

    _PREFIXES: ClassVar[dict[str, bytes]] = {"greeting": b"* OK", "+": b"+"}

    def _judge(self, buffer: bytes, expects: str) -> _Verdict:
        prefix = self._PREFIXES.get(expects)
        if prefix is not None:
            return _Accepted(_first_line_end(buffer)) if buffer.startswith(prefix) else _Rejected(0)
        position = 0
        if buffer.startswith(b"* "):
            # One untagged line (e.g. CAPABILITY from SmarterMail or Gmail) may precede the tagged reply.
            position = _first_line_end(buffer, 2)
            if len(buffer) - position < 4:
                return None
        if buffer.startswith(self._tag, position):
            position += len(self._tag)
            if buffer.startswith(b"OK", position):
                return _Accepted(_first_line_end(buffer, position))
        return _Rejected(position)

    def _accepting_prefix(self, expects: str) -> bytes | None:
        return self._PREFIXES.get(expects)

    def _final_reply(self, expects: str) -> FinalReply | None:
        # A tag never starts with "*": a reply starting with it is the tagged one, no untagged line first.
        return FinalReply(self._tag + b"OK", None)


_XTEXT_SPECIAL = re.compile(rb"[\x00-\x20+=\x7f-\xff]")


def xtext(value: bytes) -> bytes:
    """RFC 3461 xtext, as nginx encodes XCLIENT LOGIN=: 0x00-0x20, `+`, `=` and 0x7F-0xFF become `+XX`."""
    if _XTEXT_SPECIAL.search(value) is None:
        return value
    return b"".join(
        b"+%02X" % byte if byte <= 0x20 or byte >= 0x7F or byte in b"+=" else bytes([byte]) for byte in value
    )


def _is_ipv6(address_text: str) -> bool:
    try:
        return ipaddress.ip_address(address_text).version == 6
    except ValueError:
        return False


class SmtpBackendLogin(BackendLogin):
    """EHLO/HELO, XCLIENT, the client's HELO/EHLO replayed, then AUTH PLAIN or MAIL/RCPT, per settings.

    Authenticated sessions: the client gets a synthetic `235 2.0.0 OK` and the backend's last reply is
    dropped; `smtp_auth none`: the backend's reply to RCPT is the client's reply.
    """

    protocol = Protocol.SMTP

    def __init__(
        self,
        server: ServerConfig,
        credentials: Credentials,
        *,
        login: bytes,
        password: bytes | None,
        client_address: str,
        client_host: str,
    ) -> None:
        proxy = server.proxy
        self._method_none = credentials.method is AuthMethod.NONE
        helo_verb = b"EHLO " if proxy.xclient or credentials.smtp_esmtp else b"HELO "
        steps = [_Step("220", helo_verb + server.name.encode() + b"\r\n", UpstreamAction.SENDING_HELO)]
        last_reply = "250"
        if proxy.xclient:
            xclient = b"XCLIENT ADDR=" + (b"IPV6:" if _is_ipv6(client_address) else b"")
            xclient += client_address.encode()
            if login and not proxy.smtp_auth:
                xclient += b" LOGIN=" + xtext(login)
            xclient += b" NAME=" + client_host.encode() + b"\r\n"
            steps.append(_Step("250", xclient, UpstreamAction.SENDING_XCLIENT))
            last_reply = "220/250"
            if credentials.smtp_helo:
                client_helo = b"EHLO " if credentials.smtp_esmtp else b"HELO "
                client_helo += credentials.smtp_helo + b"\r\n"
                steps.append(_Step("220/250", client_helo, UpstreamAction.SENDING_CLIENT_HELO))
                last_reply = "250"
        if self._method_none:
            steps.append(_Step(last_reply, credentials.smtp_from + b"\r\n", UpstreamAction.SENDING_MAIL_FROM))
            steps.append(_Step("250", credentials.smtp_to + b"\r\n", UpstreamAction.SENDING_RCPT_TO))
            last_reply = "any"
        elif proxy.smtp_auth:
            auth = None
            if password is not None:
                plain = base64.b64encode(b"\x00" + login + b"\x00" + password)
                auth = b"AUTH PLAIN " + plain + b"\r\n"
            steps.append(_Step(last_reply, auth, UpstreamAction.SENDING_AUTH, needs_password=auth is None))
            last_reply = "235"
        steps.append(_Step(last_reply, None))
        super().__init__(server, steps)

    def _judge(self, buffer: bytes, expects: str) -> _Verdict:
        reply_end = _first_line_end(buffer)
        if buffer[3:4] == b"-":
            # Multi-line: wait until the buffer's last line is a final one (its 4th character is not `-`).
            last_line_break = buffer.rfind(b"\r\n", 1, len(buffer) - 5)
            if last_line_break <= 0 or buffer[last_line_break + 5 : last_line_break + 6] == b"-":
                return None
            while reply_end < len(buffer) and buffer[reply_end + 3 : reply_end + 4] == b"-":
                reply_end = _first_line_end(buffer, reply_end)
            if reply_end < len(buffer):
                reply_end = _first_line_end(buffer, reply_end)
        code = buffer[:3]
        accepted = {
            "220": code == b"220",
            "250": code == b"250",
            "220/250": code in (b"220", b"250"),
            "235": code == b"235",
            "any": True,
        }[expects]
        return _Accepted(reply_end) if accepted else _Rejected(0)

    def _accepting_prefix(self, expects: str) -> bytes | None:
        # A one-line reply with that code; a multi-line one (`220-`) is judged here, after its last line.
        return {"220": b"220 ", "250": b"250 ", "220/250": None}.get(expects)

    def _final_reply(self, expects: str) -> FinalReply | None:
        if self._method_none:
            return None  # any reply, a multi-line one judged after its last line
        # One-line replies only, as _accepting_prefix; the last reply may also be AUTH's 235.
        prefix = {"250": b"250 ", "235": b"235 "}.get(expects)
        return None if prefix is None else FinalReply(prefix, SMTP_AUTH_OK)

    def _client_bytes(self, buffer: bytes, reply_end: int) -> bytes:
        if self._method_none:
            return buffer
        return SMTP_AUTH_OK + buffer[reply_end:]


def backend_login_for(
    server: ServerConfig,
    credentials: Credentials,
    *,
    login: bytes,
    password: bytes | None,
    client_address: str,
    client_host: str,
) -> BackendLogin:
    """The engine for `server.protocol`.

    `login`/`password` are what goes to the backend (after `Auth-User`/`Auth-Pass`); `password` None means
    none is available (a step that needs one fails with `no password available`). `client_address` is the
    client address text (after realip); `client_host` the SMTP client host (`[UNAVAILABLE]` if unresolved).
    """
    if server.protocol is Protocol.IMAP:
        return ImapBackendLogin(server, credentials, login=login, password=password)
    if server.protocol is Protocol.POP3:
        return Pop3BackendLogin(server, login=login, password=password)
    return SmtpBackendLogin(
        server,
        credentials,
        login=login,
        password=password,
        client_address=client_address,
        client_host=client_host,
    )
