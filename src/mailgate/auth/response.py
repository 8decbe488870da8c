"""The auth server's reply: an incremental parser and the decision nginx takes from it (sans-I/O).

Feed `AuthResponseReader` the bytes received on the auth connection; it answers `NEED_MORE` until the header
block ends (or fails), then one `AuthDecision`:

* `Backend`: log in to `address:port` as `login`/`password` (`password` None: none available, SMTP only).
* `Reject`: send `client_line()` to the client, after `wait` seconds; `wait == 0` means close after it.
* `Retry`: `Auth-Status: WAIT`; ask again after `wait` seconds with the same credentials and attempt number.
* `InternalError`: log `message` at `level`, send the protocol's internal-error line and close.

Parsing follows nginx exactly: the first 1024 bytes must hold the whole header block; a leading `HTTP/`
status line is skipped and its code ignored; names are letters, digits and `-`; a line without a colon is a
header with an empty value; the last value of a repeated header wins, except that an error `Auth-Status` is
not undone by a later `OK`. Deviations, all failing closed: an empty `Auth-Status` is an error for SMTP too
(nginx lets SMTP succeed); an error text wins over `WAIT` in the same reply (nginx would sleep, then
re-query); and the WAIT flag belongs to one reply, so a later `OK` is a success (nginx never clears it and
loops forever).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from mailgate.config.model import LogLevel, Protocol
from mailgate.protocol.credentials import AuthMethod, Credentials

RESPONSE_HEADER_LIMIT = 1024  # nginx reads the reply into one buffer of this size
DEFAULT_SMTP_ERROR_CODE = b"535 5.7.0"
_MAX_ATOI = 2**63 - 1  # NGX_MAX_INT_T_VALUE on 64-bit builds

_STATUS_LINE = re.compile(rb"[^\r\n]*")
# A complete header block of `Name: value` lines, and one such line (the value without surrounding spaces).
_PLAIN_HEADER_BLOCK = re.compile(rb"(?:[A-Za-z0-9][A-Za-z0-9-]*:[^\r\n]*\r\n)*\r\n")
_PLAIN_HEADER_FIELD = re.compile(rb"([A-Za-z0-9][A-Za-z0-9-]*):[ ]*([^\r\n]*?)[ ]*\r\n")
_PLAIN_IPV4 = re.compile(rb"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_CR = 0x0D
_LF = 0x0A
_SPACE = 0x20
_COLON = 0x3A
_DASH = 0x2D


@dataclass(frozen=True)
class Backend:
    """Where to log in, and as whom. `upstream` is `Auth-Server:Auth-Port` as received, for logs."""

    address: str  # canonical IP literal, ready for connect()
    family: socket.AddressFamily
    port: int
    login: bytes
    password: bytes | None = None
    upstream: str = ""


@dataclass(frozen=True)
class Reject:
    """`Auth-Status: <text>`: the client is told `text`, after `wait` seconds (0: then the session closes)."""

    text: bytes
    wait: int = 0
    smtp_code: bytes = DEFAULT_SMTP_ERROR_CODE

    def client_line(self, protocol: Protocol, imap_tag: bytes = b"") -> bytes:
        """The line nginx sends: `<tag> NO <text>`, `-ERR <text>` or `<code> <text>`, with CRLF."""
        if protocol is Protocol.IMAP:
            return imap_tag + b" NO " + self.text + b"\r\n"
        if protocol is Protocol.POP3:
            return b"-ERR " + self.text + b"\r\n"
        return self.smtp_code + b" " + self.text + b"\r\n"


@dataclass(frozen=True)
class Retry:
    """`Auth-Status: WAIT`: ask again after `wait` seconds, same attempt number, nothing to the client."""

    wait: int = 0


@dataclass(frozen=True)
class InternalError:
    """The auth step failed: log `message` at `level`, then the internal-error line and close."""

    message: str
    level: LogLevel = LogLevel.ERROR


AuthDecision = Backend | Reject | Retry | InternalError


class NeedMore:
    """The reply's header block is not complete yet."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()


@dataclass(frozen=True)
class AuthResponseHeaders:
    """What the auth server said, after nginx's per-header rules; values are raw bytes."""

    error: bytes | None = None
    wait_flag: bool = False
    server: bytes | None = None
    port: bytes | None = None
    user: bytes | None = None
    password: bytes | None = None
    wait: int = 0
    error_code: bytes | None = None


class _MalformedError(Exception):
    """The reply broke nginx's syntax; the message is the log text without the peer name."""


class AuthResponseReader:
    """Incremental reader of one auth reply. `peer` is the auth server as nginx logs it (`url.text`)."""

    def __init__(self, peer: str, protocol: Protocol, credentials: Credentials) -> None:
        self._peer = peer
        self._protocol = protocol
        self._credentials = credentials
        self._buffer = bytearray()
        self._decision: AuthDecision | None = None

    def feed(self, data: bytes) -> AuthDecision | NeedMore:
        """Add received bytes. Returns the decision once known (and the same one on later calls)."""
        if self._decision is not None:
            return self._decision
        self._buffer += data[: RESPONSE_HEADER_LIMIT - len(self._buffer)]
        try:
            headers = parse_auth_response(bytes(self._buffer))
        except _MalformedError as malformed:
            self._decision = InternalError(f"auth http server {self._peer} {malformed}")
            return self._decision
        if headers is None:
            if len(self._buffer) < RESPONSE_HEADER_LIMIT:
                return NEED_MORE
            self._decision = InternalError(
                f"auth http server {self._peer} sent too long response header", LogLevel.INFO
            )
            return self._decision
        self._decision = decide(headers, self._protocol, self._credentials, self._peer)
        return self._decision

    def feed_eof(self) -> AuthDecision:
        """The auth server closed the connection: the decision if the headers were complete, else an error."""
        if self._decision is not None:
            return self._decision
        # nginx logs nothing of its own here; info level keeps error-level logs identical to nginx's.
        self._decision = InternalError(
            f"auth http server {self._peer} closed the connection before the end of the response header",
            LogLevel.INFO,
        )
        return self._decision


def parse_auth_response(data: bytes) -> AuthResponseHeaders | None:
    """Parse a reply from its first byte. None: the header block is not complete in `data`.

    Raises _MalformedError (module-private) for syntax nginx refuses; use AuthResponseReader from outside.
    """
    position = _skip_status_line(data)
    if position is None:
        return None
    fields = _header_fields(data, position)
    if fields is None:
        return None
    return _apply_headers(fields)


def _skip_status_line(data: bytes) -> int | None:
    if len(data) < 5 and b"HTTP/".startswith(data):
        return None
    if not data.startswith(b"HTTP/"):
        return 0
    index = _STATUS_LINE.match(data).end()  # type: ignore[union-attr]  # it always matches after HTTP/
    if index == len(data):
        return None
    if data[index] == _LF:
        return index + 1
    if index + 1 == len(data):  # a CR, the last byte so far
        return None
    if data[index + 1] != _LF:
        raise _MalformedError("sent invalid response")
    return index + 2


def _is_alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _header_fields(data: bytes, position: int) -> list[tuple[bytes, bytes]] | None:
    """The (lowercased name, value) pairs up to the empty line, as nginx's header state machine reads them.

    A complete block of plain `Name: value` lines (what auth servers send) is read by regular expressions;
    anything else, by the state machine itself (`_header_fields_by_state`)."""
    block = _PLAIN_HEADER_BLOCK.match(data, position)
    if block is None:
        return _header_fields_by_state(data, position)
    return [(name.lower(), value) for name, value in _PLAIN_HEADER_FIELD.findall(data, position, block.end())]


def _header_fields_by_state(data: bytes, position: int) -> list[tuple[bytes, bytes]] | None:
    """`_header_fields` byte by byte, by nginx's header state machine."""
    fields: list[tuple[bytes, bytes]] = []
    state = "start"
    name_start = name_end = value_start = value_end = position
    invalid = _MalformedError("sent invalid header in response")
    for index in range(position, len(data)):
        byte = data[index]
        if state == "start":
            if byte == _CR:
                state = "header_almost_done"
            elif byte == _LF:
                return fields
            elif _is_alnum(byte):
                name_start, state = index, "name"
            else:
                raise invalid
        elif state == "name":
            if _is_alnum(byte) or byte == _DASH:
                continue
            if byte == _COLON:
                name_end, state = index, "space_before_value"
            elif byte in (_CR, _LF):
                name_end = value_start = value_end = index
                state = "almost_done" if byte == _CR else "start"
            else:
                raise invalid
        elif state == "space_before_value":
            if byte == _SPACE:
                continue
            if byte in (_CR, _LF):
                value_start = value_end = index
                state = "almost_done" if byte == _CR else "start"
            else:
                value_start, state = index, "value"
        elif state == "value":
            if byte == _SPACE:
                value_end, state = index, "space_after_value"
            elif byte in (_CR, _LF):
                value_end = index
                state = "almost_done" if byte == _CR else "start"
        elif state == "space_after_value":
            if byte == _CR:
                state = "almost_done"
            elif byte == _LF:
                state = "start"
            elif byte != _SPACE:
                state = "value"
        elif state == "almost_done":
            if byte != _LF:
                raise invalid
            state = "start"
        elif byte == _LF:  # header_almost_done
            return fields
        else:
            raise invalid
        if state == "start":
            fields.append((data[name_start:name_end].lower(), data[value_start:value_end]))
    return None


def _atoi(value: bytes) -> int | None:
    """nginx's ngx_atoi: decimal digits only, non-empty, no overflow."""
    if not value.isdigit():  # ASCII digits only, and False for b""
        return None
    number = int(value)
    return number if number <= _MAX_ATOI else None


def _apply_headers(fields: list[tuple[bytes, bytes]]) -> AuthResponseHeaders:
    error: bytes | None = None
    wait_flag = False
    server = port = user = password = error_code = None
    wait = 0
    for name, value in fields:
        if name == b"auth-status":
            if value == b"WAIT":
                wait_flag = True
            elif value != b"OK":
                error = value
        elif name == b"auth-server":
            server = value
        elif name == b"auth-port":
            port = value
        elif name == b"auth-user":
            user = value
        elif name == b"auth-pass":
            password = value
        elif name == b"auth-wait":
            seconds = _atoi(value)
            if seconds is not None:
                wait = seconds
        elif name == b"auth-error-code":
            error_code = value
    return AuthResponseHeaders(error, wait_flag, server, port, user, password, wait, error_code)


def decide(
    headers: AuthResponseHeaders, protocol: Protocol, credentials: Credentials, peer: str
) -> AuthDecision:
    """nginx's verdict on a complete reply, in nginx's order of checks."""
    if headers.error is not None:
        code = headers.error_code if headers.error_code else DEFAULT_SMTP_ERROR_CODE
        return Reject(headers.error, headers.wait, code)
    if headers.wait_flag:
        return Retry(headers.wait)
    if not headers.server or not headers.port:
        return InternalError(f"auth http server {peer} did not send server or port")
    password = headers.password
    if password is None and credentials.method is AuthMethod.PLAIN:
        password = credentials.password
    if password is None and protocol is not Protocol.SMTP:
        return InternalError(f"auth http server {peer} did not send password")
    server_text = headers.server.decode("latin-1")
    port_text = headers.port.decode("latin-1")
    address = parse_backend_address(headers.server)
    if address is None:
        return InternalError(f'auth http server {peer} sent invalid server address:"{server_text}"')
    port = _atoi(headers.port)
    if port is None or not 1 <= port <= 65535:
        return InternalError(f'auth http server {peer} sent invalid server port:"{port_text}"')
    login = headers.user if headers.user is not None else credentials.login
    return Backend(address[0], address[1], port, login, password, f"{server_text}:{port_text}")


def parse_backend_address(text: bytes) -> tuple[str, socket.AddressFamily] | None:
    """An `Auth-Server` value as nginx's ngx_parse_addr reads it: an IPv4 or bare IPv6 literal, no names."""
    ipv4 = _inet_addr(text)
    if ipv4 is not None:
        return ipv4, socket.AF_INET
    if not text or any(chr(byte) not in "0123456789abcdefABCDEF:." for byte in text):
        return None
    try:
        return str(ipaddress.IPv6Address(text.decode("ascii"))), socket.AF_INET6
    except ipaddress.AddressValueError:
        return None


def _inet_addr(text: bytes) -> str | None:
    """nginx's ngx_inet_addr: four dot-separated decimal octets (an empty octet is 0); not 255.255.255.255."""
    plain = _PLAIN_IPV4.fullmatch(text)
    if plain is not None:  # the usual form, without the loop below
        octets = [int(octet) for octet in plain.groups()]
        if max(octets) > 255 or octets == [255, 255, 255, 255]:
            return None
        return ".".join(map(str, octets))
    return _inet_addr_by_loop(text)


def _inet_addr_by_loop(text: bytes) -> str | None:
    """ngx_inet_addr byte by byte, for every form the expression above leaves to it."""
    value = octet = dots = 0
    for byte in text:
        if 0x30 <= byte <= 0x39:
            octet = octet * 10 + byte - 0x30
            if octet > 255:
                return None
        elif byte == 0x2E:
            value, octet, dots = (value << 8) + octet, 0, dots + 1
        else:
            return None
    if dots != 3:
        return None
    value = (value << 8) + octet
    if value == 0xFFFFFFFF:  # INADDR_NONE, which nginx cannot tell from a parse failure
        return None
    return str(ipaddress.IPv4Address(value))
