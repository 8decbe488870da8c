"""The auth_http request, byte for byte as nginx builds it (sans-I/O).

`build_auth_request(server, attempt)` returns the whole `GET ... HTTP/1.0` request. Header order and presence
follow nginx's `ngx_mail_auth_http_create_request`. `Auth-User`, `Auth-Pass` and `Auth-SSL-Cert` are escaped
(controls, space and `%` become `%XX`); every other value is sent raw, so a raw value holding CR, LF or NUL
would let a client or a resolver inject headers: such a request is refused with `AuthRequestRefusedError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.config.model import Protocol, ServerConfig, VerifyClient
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.engine import PerServer
from mailgate.proxy.proxy_protocol import ProxyProtocolHeader
from mailgate.tls.facts import TlsFacts

UNAVAILABLE = "[UNAVAILABLE]"
TEMPUNAVAIL = "[TEMPUNAVAIL]"

# Bytes nginx's NGX_ESCAPE_MAIL_AUTH table escapes: controls, space and "%".
_ESCAPED = re.compile(rb"[\x00-\x20%]")
_ESCAPED_NAMES = frozenset((b"Auth-User", b"Auth-Pass", b"Auth-SSL-Cert"))


class AuthRequestRefusedError(ValueError):
    """A raw header value would break the request apart; the message names the header."""


@dataclass(frozen=True)
class AuthAttempt:
    """Everything about one login attempt that the auth request reports, besides the server configuration.

    `client_address` is the client's address text without port (IPv6 without brackets, `unix:` for UNIX
    sockets), after realip. `smtp_client_host` is the SMTP client host of the resolver lookup (a name,
    `[UNAVAILABLE]` or `[TEMPUNAVAIL]`); it is only sent for SMTP. `login_attempt` counts from 1.
    """

    credentials: Credentials
    login_attempt: int
    client_address: str
    smtp_client_host: str = UNAVAILABLE
    proxy_protocol: ProxyProtocolHeader | None = None
    tls: TlsFacts | None = None


def escape_auth_value(value: bytes) -> bytes:
    """nginx's escaping for Auth-User, Auth-Pass and Auth-SSL-Cert: bytes 0x00-0x20 and `%` as `%XX`."""
    if _ESCAPED.search(value) is None:
        return value
    return _ESCAPED.sub(_escape_match, value)


def _escape_match(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


def build_auth_request(server: ServerConfig, attempt: AuthAttempt) -> bytes:
    """The exact request bytes nginx sends for this attempt.

    Raises AuthRequestRefusedError when a raw (unescaped) value holds CR, LF or NUL.
    """
    credentials = attempt.credentials
    frame = _FRAMES(server)
    protocol = server.protocol
    # (name, value) in nginx's order; the configured auth_http_header lines come last
    lines: list[tuple[bytes, bytes]] = [
        frame.host,
        _METHOD_LINES[credentials.method],
        (b"Auth-User", escape_auth_value(credentials.login)),
        (b"Auth-Pass", escape_auth_value(credentials.password)),
    ]
    # nginx sends the session's salt with every method but plain (apop, cram-md5, and also external/none
    # when the session already generated one), right after Auth-Pass.
    if credentials.method is not AuthMethod.PLAIN and credentials.salt:
        lines.append((b"Auth-Salt", credentials.salt))
    lines += (
        frame.protocol,
        (b"Auth-Login-Attempt", b"%d" % attempt.login_attempt),
        (b"Client-IP", attempt.client_address.encode()),
    )
    if protocol is Protocol.SMTP:
        lines.append((b"Client-Host", attempt.smtp_client_host.encode()))
    if attempt.proxy_protocol is not None and attempt.proxy_protocol.has_addresses:
        lines += _proxy_protocol_lines(attempt.proxy_protocol)
    if credentials.method is AuthMethod.NONE:
        lines += (
            (b"Auth-SMTP-Helo", credentials.smtp_helo),
            (b"Auth-SMTP-From", credentials.smtp_from),
            (b"Auth-SMTP-To", credentials.smtp_to),
        )
    if attempt.tls is not None:
        lines += _tls_lines(server, attempt.tls)
    lines += frame.configured
    request = b"".join([frame.request_line, *[b"%s: %s\r\n" % line for line in lines], b"\r\n"])
    # Escaped values hold no CR, LF or NUL: any beyond each line's own CRLF is in a name or a raw value.
    line_ends = len(lines) + 2
    if b"\x00" in request or request.count(b"\r") != line_ends or request.count(b"\n") != line_ends:
        _refuse_first_unsafe(lines, len(lines) - len(frame.configured), frame.uri)
    return request


@dataclass(frozen=True)
class _RequestFrame:
    """What every auth request of one server holds: its request line, Host, protocol and configured
    headers (built once per server)."""

    uri: bytes
    request_line: bytes
    host: tuple[bytes, bytes]
    protocol: tuple[bytes, bytes]
    configured: tuple[tuple[bytes, bytes], ...]


def _request_frame(server: ServerConfig) -> _RequestFrame:
    url = server.auth_http.url
    uri = url.uri.encode()
    return _RequestFrame(
        uri=uri,
        request_line=b"GET " + uri + b" HTTP/1.0\r\n",
        host=(b"Host", url.host_header.encode()),
        protocol=(b"Auth-Protocol", server.protocol.value.encode()),
        configured=tuple((name.encode(), value.encode()) for name, value in server.auth_http.headers),
    )


_FRAMES = PerServer(_request_frame)
_METHOD_LINES = {method: (b"Auth-Method", method.value.encode()) for method in AuthMethod}


def _proxy_protocol_lines(header: ProxyProtocolHeader) -> list[tuple[bytes, bytes]]:
    return [
        (b"Proxy-Protocol-Addr", (header.source_addr or "").encode()),
        (b"Proxy-Protocol-Port", str(header.source_port or 0).encode()),
        (b"Proxy-Protocol-Server-Addr", (header.destination_addr or "").encode()),
        (b"Proxy-Protocol-Server-Port", str(header.destination_port or 0).encode()),
    ]


def _tls_lines(server: ServerConfig, tls: TlsFacts) -> list[tuple[bytes, bytes]]:
    lines: list[tuple[bytes, bytes]] = [(b"Auth-SSL", b"on")]
    if tls.protocol:
        lines.append((b"Auth-SSL-Protocol", tls.protocol.encode()))
    if tls.cipher:
        lines.append((b"Auth-SSL-Cipher", tls.cipher.encode()))
    if server.ssl.verify_client is VerifyClient.OFF:
        return lines
    if tls.verify:
        lines.append((b"Auth-SSL-Verify", tls.verify.encode()))
    certificate = tls.certificate
    if certificate is None:
        return lines
    for name, value in (
        (b"Auth-SSL-Subject", certificate.subject),
        (b"Auth-SSL-Issuer", certificate.issuer),
        (b"Auth-SSL-Serial", certificate.serial),
        (b"Auth-SSL-Fingerprint", certificate.fingerprint),
    ):
        if value:
            lines.append((name, value.encode()))
    if server.auth_http.pass_client_cert and certificate.pem:
        lines.append((b"Auth-SSL-Cert", escape_auth_value(certificate.pem)))
    return lines


def _refuse_first_unsafe(lines: list[tuple[bytes, bytes]], configured_from: int, uri: bytes) -> None:
    """Raise for the first name or raw value, in request order, that holds CR, LF or NUL (the names from
    `configured_from` on are `auth_http_header` names; the others are ours)."""
    for index, (name, value) in enumerate(lines):
        if index >= configured_from:
            _refuse_unsafe(name, name)
        if name not in _ESCAPED_NAMES:
            _refuse_unsafe(name, value)
    _refuse_unsafe(b"request line", uri)


def _refuse_unsafe(name: bytes, value: bytes) -> None:
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        shown = name.decode("utf-8", "backslashreplace")
        raise AuthRequestRefusedError(f'auth http request not sent: "{shown}" value contains CR, LF or NUL')
