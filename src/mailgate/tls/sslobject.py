"""The SSLObject the event loop gets for each client connection, made to fail and close as nginx does.

asyncio and uvloop drive the handshake and reads on memory BIOs and drop the connection as soon as an SSL
call raises, leaving OpenSSL's fatal alert unsent in the outgoing BIO; and they free the SSL without a
shutdown when the client leaves without close_notify, which makes OpenSSL drop the session from the cache.
`ClientSSLObject` therefore

* runs the handshake through the binding, so a failure is described from OpenSSL's error queue as nginx
  describes it (`TlsError`), and writes the fatal alert to the socket itself before raising;
* describes a failed read the same way (from the errors the info callback saw) and sends its alert too;
* sends no close_notify to a client that timed out, when told (`close_without_notify`);
* marks the SSL as shut down when it is freed, as nginx's ngx_ssl_shutdown always does, so that a session
  stays resumable however the connection ended (OpenSSL has removed it already after a fatal alert).

After its own close_notify, the event loop should wait `SHUTDOWN_TIMEOUT` for the client's, as nginx does.

The session names its socket with `set_client_socket` before the event loop wraps it; the event loop runs
the connection's callbacks in a copy of that context, where the SSLObject finds it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from contextvars import ContextVar
from typing import Any

from mailgate.tls import callbacks
from mailgate.tls.failures import TlsError, peer_closed_in_handshake, ssl_call_failed
from mailgate.tls.libssl import (
    SSL_ERROR_SSL,
    SSL_ERROR_SYSCALL,
    SSL_ERROR_WANT_READ,
    SSL_ERROR_WANT_WRITE,
    SSL_RECEIVED_SHUTDOWN,
    SSL_SENT_SHUTDOWN,
    TLS1_3_VERSION,
    crypto,
    libssl,
    ssl_of,
    take_errors,
)

_client_socket: ContextVar[socket.socket | None] = ContextVar("mailgate_tls_client_socket", default=None)

_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError)

# How long nginx waits for the client's close_notify after sending its own (ngx_ssl_shutdown's timer).
SHUTDOWN_TIMEOUT = 3.0


def set_client_socket(sock: socket.socket) -> None:
    """Name the socket of the current task's client connection, before the event loop takes it (for
    `listen ... ssl` and for a plain connection that may turn to STARTTLS alike)."""
    _client_socket.set(sock)


def close_without_notify(ssl_object: ssl.SSLObject) -> None:
    """Let the coming shutdown send no close_notify, as nginx closes a client that timed out."""
    libssl.SSL_set_quiet_shutdown(ssl_of(ssl_object), 1)


class ClientSSLObject(ssl.SSLObject):
    """The server side of one client connection (see the module docstring)."""

    _sslobj: Any  # the _ssl._SSLSocket Python's SSLObject wraps
    _outgoing: ssl.MemoryBIO
    _socket: socket.socket | None
    _ssl: int
    _resumption_checked: bool

    @classmethod
    def _create(
        cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ) -> ClientSSLObject:
        self: ClientSSLObject = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        self._outgoing = outgoing
        self._socket = _client_socket.get()
        self._ssl = ssl_of(self)
        self._resumption_checked = False
        callbacks.watch_fatal_alerts(self._ssl)
        return self

    def do_handshake(self) -> None:
        crypto.ERR_clear_error()
        result = libssl.SSL_do_handshake(self._ssl)
        if result == 1:
            self._sslobj.do_handshake()  # returns at once; Python's ssl sees the handshake completed
            libssl.SSL_set_info_callback(self._ssl, callbacks.INFO_POINTER)
            return
        error = libssl.SSL_get_error(self._ssl, result)
        if error == SSL_ERROR_WANT_READ:
            if not self._resumption_checked and libssl.SSL_session_reused(self._ssl):
                # The server's flight is out and the client's Finished not yet read: OpenSSL has not issued
                # this connection's new tickets yet.
                self._resumption_checked = True
                if libssl.SSL_version(self._ssl) == TLS1_3_VERSION:
                    callbacks.clamp_resumed_tls13_lifetime(self._ssl)
            raise ssl.SSLWantReadError(error, "The operation did not complete (read)")
        if error == SSL_ERROR_WANT_WRITE:
            raise ssl.SSLWantWriteError(error, "The operation did not complete (write)")
        queued = take_errors()
        if error in (SSL_ERROR_SSL, SSL_ERROR_SYSCALL) and queued:
            line = ssl_call_failed("SSL_do_handshake()", queued)
        else:  # nginx: SSL_ERROR_ZERO_RETURN, or nothing queued
            line = peer_closed_in_handshake(None)
        self._send_alert()
        raise TlsError(line)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        try:
            received = self._sslobj.read(len, buffer) if buffer is not None else self._sslobj.read(len)
        except _AGAIN:
            raise
        except ssl.SSLError as error:
            self._send_alert()
            queued = callbacks.take_fatal_alert_errors(self._ssl)
            if queued is None:  # no fatal alert: nothing better than Python's words
                raise
            raise TlsError(ssl_call_failed("SSL_read()", queued)) from error
        if not received and libssl.SSL_get_shutdown(self._ssl) & SSL_RECEIVED_SHUTDOWN:
            # The client's close_notify (Python reads it as b""): nginx closes without answering it.
            libssl.SSL_set_quiet_shutdown(self._ssl, 1)
        return received

    def _send_alert(self) -> None:
        """Write what OpenSSL left in the outgoing BIO (its fatal alert) to the socket, without waiting: the
        event loop closes the connection as soon as the failure is raised and would drop it."""
        data = self._outgoing.read()
        if data and self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.send(data, socket.MSG_DONTWAIT)

    def __del__(self) -> None:
        ssl = getattr(self, "_ssl", 0)
        if not ssl:
            return
        with contextlib.suppress(Exception):  # also at interpreter exit, when modules are torn down
            callbacks.forget_fatal_alerts(ssl)
            if not libssl.SSL_in_init(ssl):
                libssl.SSL_set_shutdown(ssl, libssl.SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN)
