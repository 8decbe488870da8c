"""TLS failures on client connections in nginx's words and at nginx's levels (Debian's nginx 1.22).

nginx logs a failed SSL call as `SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version
number)`: the call, then every entry of OpenSSL's error queue. The level is `info` when the reason of the
queue's first entry is one nginx's ngx_ssl_connection_error counts as the client's doing (its mail module
logs client errors at info), `crit` for any other. A handshake the client abandons (EOF, reset) is `peer
closed connection in SSL handshake`; a handshake that times out closes without a line.
"""

from __future__ import annotations

import errno
import os
import ssl
from dataclasses import dataclass

from mailgate.config.model import LogLevel
from mailgate.tls.libssl import QueuedError, errors_text

# nginx 1.22's list of client-caused failures (ngx_ssl_connection_error), as OpenSSL 3.0 numbers them.
# SSL_R_NO_CIPHERS_PASSED, SSL_R_NO_COMMON_SIGNATURE_ALGORITHMS and SSL_R_NO_SHARED_GROUP are not defined
# by OpenSSL 3.0, so nginx compiled them out.
CLIENT_REASONS = frozenset(
    {
        101,  # no suitable key share
        103,  # bad change cipher spec
        118,  # no suitable signature algorithm
        129,  # block cipher pad is wrong
        149,  # digest check failed
        151,  # error in received cipher list
        152,  # excessive message size
        155,  # https proxy request
        156,  # http request
        159,  # length mismatch
        183,  # no ciphers specified
        187,  # no compression specified
        193,  # no shared cipher
        213,  # record length mismatch
        226,  # clienthello tlsext
        227,  # parse tlsext
        234,  # callback failed
        235,  # no application protocol
        244,  # unexpected message
        245,  # unexpected record
        246,  # unknown alert type
        252,  # unknown protocol
        258,  # unsupported protocol
        267,  # wrong version number
        281,  # decryption failed or bad record mac
        335,  # renegotiate ext too long
        336,  # renegotiation encoding err
        337,  # renegotiation mismatch
        338,  # unsafe legacy renegotiation disabled
        345,  # scsv received when renegotiating
        373,  # inappropriate fallback
        377,  # cert cb error
        396,  # version too low
        1000,  # close notify (as a fatal alert)
        # fatal alerts received from the client: SSL_AD_REASON_OFFSET (1000) + the alert's number
        1010,  # unexpected message
        1020,  # bad record mac
        1021,  # decryption failed
        1022,  # record overflow
        1030,  # decompression failure
        1040,  # handshake failure
        1041,  # no certificate
        1042,  # bad certificate
        1043,  # unsupported certificate
        1044,  # certificate revoked
        1045,  # certificate expired
        1046,  # certificate unknown
        1047,  # illegal parameter
        1048,  # unknown ca
        1049,  # access denied
        1050,  # decode error
        1051,  # decrypt error
        1060,  # export restriction
        1070,  # protocol version
        1071,  # insufficient security
        1080,  # internal error
        1090,  # user cancelled
        1100,  # no renegotiation
    }
)

# Socket errors nginx's ngx_connection_error logs at info for a mail connection; any other is an alert.
_QUIET_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
    }
)


@dataclass(frozen=True)
class TlsLogLine:
    """What nginx writes to its error_log for a TLS failure (the session adds action and context)."""

    level: LogLevel
    message: str


class TlsError(ssl.SSLError):
    """A TLS failure on a client connection, carrying the line nginx logs for it."""

    def __init__(self, line: TlsLogLine) -> None:
        super().__init__(line.message)
        self.line = line


def ssl_call_failed(call: str, errors: list[QueuedError]) -> TlsLogLine:
    """nginx's line for an SSL call that failed with SSL_ERROR_SSL and these queued errors."""
    level = LogLevel.INFO if errors and errors[0].reason in CLIENT_REASONS else LogLevel.CRIT
    return TlsLogLine(level, f"{call} failed{errors_text(errors)}")


def peer_closed_in_handshake(number: int | None) -> TlsLogLine:
    """The client ended the connection during the handshake: EOF (no errno) or a socket error."""
    message = "peer closed connection in SSL handshake"
    if not number:
        return TlsLogLine(LogLevel.INFO, message)
    level = LogLevel.INFO if number in _QUIET_ERRNOS else LogLevel.ALERT
    return TlsLogLine(level, f"{message} ({number}: {os.strerror(number)})")


def handshake_failure(error: BaseException) -> TlsLogLine | None:
    """nginx's line for a server handshake that ended with `error` (as the event loop reports it), or None
    when it timed out: nginx closes a connection whose handshake timed out without logging anything."""
    if isinstance(error, TlsError):
        return error.line
    if isinstance(error, TimeoutError):
        return None
    if isinstance(error, ssl.SSLError):  # not raised by ClientSSLObject; worded as Python words it
        return TlsLogLine(LogLevel.CRIT, f"SSL_do_handshake() failed ({error})")
    if isinstance(error, ConnectionAbortedError) and error.errno is None:
        return None  # asyncio's and uvloop's handshake timeout
    if isinstance(error, OSError):
        return peer_closed_in_handshake(error.errno)  # uvloop reports an EOF as ConnectionResetError()
    return TlsLogLine(LogLevel.CRIT, f"SSL_do_handshake() failed ({error!r})")


def tls_failure(call: str, errors: list[tuple[int, str]]) -> TlsError:
    """The error a failed SSL call on a client connection raises (`mailgate._io` calls this with OpenSSL's
    queued errors, oldest first): a handshake that failed with nothing queued is the client's close."""
    queued = [QueuedError(code, text) for code, text in errors]
    if not queued and call == "SSL_do_handshake()":
        return TlsError(peer_closed_in_handshake(None))
    return TlsError(ssl_call_failed(call, queued))
