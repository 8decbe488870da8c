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
from mailgate.proxy.proxy_protocol import ProxyProtocolHeader
from mailgate.tls.facts import TlsFacts

UNAVAILABLE = "[UNAVAILABLE]"
TEMPUNAVAIL = "[TEMPUNAVAIL]"

# Bytes nginx's NGX_ESCAPE_MAIL_AUTH table escapes: controls, space and "%".
_ESCAPED = re.compile(rb"[\x00-\x20%]")
_ESCAPED_NAMES = frozenset(("Auth-User", "Auth-Pass", "Auth-SSL-Cert"))


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
    settings = server.auth_http
    lines: list[tuple[str, bytes]] = [
        ("Host", settings.url.host_header.encode()),
        ("Auth-Method", credentials.method.value.encode()),
        ("Auth-User", escape_auth_value(credentials.login)),
        ("Auth-Pass", escape_auth_value(credentials.password)),
    ]
    salt_line = _salt_line(credentials)
    lines += [
        ("Auth-Protocol", server.protocol.value.encode()),
        ("Auth-Login-Attempt", str(attempt.login_attempt).encode()),
        ("Client-IP", attempt.client_address.encode()),
    ]
    if server.protocol is Protocol.SMTP:
        lines.append(("Client-Host", attempt.smtp_client_host.encode()))
    lines += _proxy_protocol_lines(attempt.proxy_protocol)
    if credentials.method is AuthMethod.NONE:
        lines += [
            ("Auth-SMTP-Helo", credentials.smtp_helo),
            ("Auth-SMTP-From", credentials.smtp_from),
            ("Auth-SMTP-To", credentials.smtp_to),
        ]
    if attempt.tls is not None:
        lines += _tls_lines(server, attempt.tls)
    lines += [(name, value.encode()) for name, value in settings.headers]

    uri = settings.url.uri.encode()
    parts = [b"GET ", uri, b" HTTP/1.0\r\n"]
    line_ends = len(lines) + 2
    for name, value in lines:
        parts += (name.encode(), b": ", value, b"\r\n")
        if name == "Auth-Pass" and salt_line is not None:
            parts.append(salt_line)
            line_ends += 1
    parts.append(b"\r\n")
    request = b"".join(parts)
    # Escaped values hold no CR, LF or NUL: any beyond each line's own CRLF is in a name or a raw value.
    if b"\x00" in request or request.count(b"\r") != line_ends or request.count(b"\n") != line_ends:
        _refuse_first_unsafe(lines, len(lines) - len(settings.headers), uri)
    return request


def _salt_line(credentials: Credentials) -> bytes | None:
    # nginx sends the session's salt with every method but plain (apop, cram-md5, and also external/none
    # when the session already generated one), right after Auth-Pass; the salt line carries its own CRLF.
    if credentials.method is AuthMethod.PLAIN or not credentials.salt:
        return None
    _refuse_unsafe("Auth-Salt", credentials.salt)
    return b"Auth-Salt: " + credentials.salt + b"\r\n"


def _proxy_protocol_lines(header: ProxyProtocolHeader | None) -> list[tuple[str, bytes]]:
    if header is None or not header.has_addresses:
        return []
    return [
        ("Proxy-Protocol-Addr", (header.source_addr or "").encode()),
        ("Proxy-Protocol-Port", str(header.source_port or 0).encode()),
        ("Proxy-Protocol-Server-Addr", (header.destination_addr or "").encode()),
        ("Proxy-Protocol-Server-Port", str(header.destination_port or 0).encode()),
    ]


def _tls_lines(server: ServerConfig, tls: TlsFacts) -> list[tuple[str, bytes]]:
    lines: list[tuple[str, bytes]] = [("Auth-SSL", b"on")]
    if tls.protocol:
        lines.append(("Auth-SSL-Protocol", tls.protocol.encode()))
    if tls.cipher:
        lines.append(("Auth-SSL-Cipher", tls.cipher.encode()))
    if server.ssl.verify_client is VerifyClient.OFF:
        return lines
    if tls.verify:
        lines.append(("Auth-SSL-Verify", tls.verify.encode()))
    certificate = tls.certificate
    if certificate is None:
        return lines
    for name, value in (
        ("Auth-SSL-Subject", certificate.subject),
        ("Auth-SSL-Issuer", certificate.issuer),
        ("Auth-SSL-Serial", certificate.serial),
        ("Auth-SSL-Fingerprint", certificate.fingerprint),
    ):
        if value:
            lines.append((name, value.encode()))
    if server.auth_http.pass_client_cert and certificate.pem:
        lines.append(("Auth-SSL-Cert", escape_auth_value(certificate.pem)))
    return lines


def _refuse_first_unsafe(lines: list[tuple[str, bytes]], configured_from: int, uri: bytes) -> None:
    """Raise for the first name or raw value, in request order, that holds CR, LF or NUL (the names from
    `configured_from` on are `auth_http_header` names; the others are ours)."""
    for index, (name, value) in enumerate(lines):
        if index >= configured_from:
            _refuse_unsafe(name, name.encode())
        if name not in _ESCAPED_NAMES:
            _refuse_unsafe(name, value)
    _refuse_unsafe("request line", uri)


def _refuse_unsafe(name: str, value: bytes) -> None:
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise AuthRequestRefusedError(f'auth http request not sent: "{name}" value contains CR, LF or NUL')
