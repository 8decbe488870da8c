"""The two ends of a proxied session, and the byte relay between them.

`Peer` is an asyncio protocol with two modes. Before the relay it buffers what arrives and hands it out with
`await read()`, so the pre-auth engine and the backend login can be driven step by step. During the relay it
forwards every chunk straight to the other end's transport as it arrives (no copy into a Python buffer), with
back-pressure: when one side's transport buffers too much, the other side stops reading until it drains.

A client's TLS is terminated in its `Peer` too (`start_tls`): an SSLObject over two memory BIOs on the plain
transport, as uvloop's own TLS layer works but without its objects and its 256 KiB read buffer per
connection, which made most of an idle session's memory.

The relay ends, as in nginx, when the backend closes (after everything it sent has been written to the
client), when the client is gone, or after `proxy_timeout` without any transfer. Beyond nginx, a client that
half-closes (shuts down its sending side) still gets every byte the backend sends until the backend closes.
The half-close is passed on to the backend once nothing has crossed the relay for `HALF_CLOSE_QUIET`
seconds, not at once: a backend that reads the EOF while replies to pipelined commands are still queued
may end the session there (Dovecot drops a connection on EOF whatever it still has to send), so the
backend gets the time to answer everything the client sent first.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

# Stop reading a client that sends faster than the pre-auth engine consumes (the engine's own buffer limits
# decide what is too long; this only bounds memory while it works).
_BUFFERED_READ_PAUSE = 256 * 1024
# Plaintext taken from the TLS layer per read call: one TLS record holds at most 16 KiB.
_TLS_READ_SIZE = 64 * 1024
# Write buffer limits of a TLS connection's transport. uvloop's TLS layer let up to 512 KiB of ciphertext
# gather beyond its transport's 64 KiB before pausing the writer: a relay that pauses at 64 KiB pauses and
# resumes its backend eight times as often.
_TLS_WRITE_HIGH_WATER = 576 * 1024
_TLS_WRITE_LOW_WATER = 128 * 1024
# Seconds without any transfer after a client's half-close before the backend is told (see the docstring).
HALF_CLOSE_QUIET = 1.0


class Peer(asyncio.Protocol):
    """One connection of a session (the client's or the backend's), in plaintext or, after `start_tls`, as
    the server end of TLS over the connection's own transport (see `start_tls`)."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_drain_waiter",
        "_eof",
        "_error",
        "_expired",
        "_loop",
        "_lost",
        "_read_waiter",
        "_reading_paused",
        "_relay",
        "_tls",
        "_write_paused",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._relay: Relay | None = None
        self._tls: _Tls | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._expired = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Kept: Python 3.11's get_running_loop() makes a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            self._received(data)
            return
        tls.incoming.write(data)
        state = tls.state
        if state is _TlsState.OPEN:
            self._tls_read(tls)
        elif state is _TlsState.HANDSHAKE:
            self._tls_handshake(tls)
        elif state is _TlsState.CLOSING:
            self._tls_shutdown(tls)

    def eof_received(self) -> bool:
        tls = self._tls
        if tls is not None:
            # TLS has no half-close: an EOF without close_notify ends the connection (mid-handshake, as a
            # reset: uvloop's and nginx's view alike).
            if tls.state is _TlsState.HANDSHAKE:
                self._tls_failed(tls, ConnectionResetError())
            elif tls.state is not _TlsState.CLOSED:
                self._tls_done(tls)
                if self.transport is not None:
                    self.transport.close()
            return False
        self._input_ended()
        return True  # keep our sending side open so a half-closed client still gets its replies

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        tls = self._tls
        if tls is not None and tls.state is not _TlsState.CLOSED:
            self._tls_done(tls, exc if exc is not None else False)
        self._lost = True
        self._eof = True
        if exc is not None or self._error is None:  # keep a TLS failure that made us abort
            self._error = exc
        self._wake_reader()
        self._wake_drainer()
        if self._relay is not None:
            self._relay.lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._relay is not None:
            self._relay.pause_towards(self)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainer()
        if self._relay is not None:
            self._relay.resume_towards(self)

    # -- buffered mode

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    @property
    def is_closed(self) -> bool:
        return self._lost

    @property
    def receive_error(self) -> OSError | None:
        """Why the connection was lost, when it was an error (a reset) rather than a close."""
        return self._error if isinstance(self._error, OSError) else None

    def set_deadline(self, when: float | None) -> None:
        """From `when` on (event loop time), `read()` and `drain()` raise TimeoutError instead of waiting,
        the one waiting then included; None: no deadline. One timer for a whole stage of a session."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._expired = False
        if when is not None and not self._lost:
            self._deadline = self._event_loop().call_at(when, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._expired = True
        self._wake_reader()
        self._wake_drainer()

    async def read(self) -> bytes:
        """Everything received so far (waiting for at least one byte); b"" once the peer has closed."""
        while not self._buffer and not self._eof:
            if self._expired:
                raise TimeoutError
            waiter = self._event_loop().create_future()
            self._read_waiter = waiter
            try:
                await waiter
            finally:
                self._read_waiter = None
        return self.take_buffered()

    def take_buffered(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def discard_buffered(self) -> None:
        """Forget unread bytes (after STARTTLS: plaintext sent behind the command must never be executed)."""
        self._buffer.clear()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self._lost or not data:
            return
        tls = self._tls
        if tls is None:
            transport.write(data)
            return
        if tls.state is not _TlsState.OPEN:
            return  # closing: what is written now would follow our close_notify
        if tls.backlog:
            tls.backlog.append(data)
            return
        try:
            tls.ssl_object.write(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            tls.backlog.append(data)  # a renegotiation or key update wants the client's answer first
        except ssl.SSLError as error:
            self._tls_failed(tls, error)
            return
        self._tls_flush(tls)

    async def drain(self) -> None:
        """Wait until the transport has taken the written bytes (ConnectionError if the peer is gone)."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        while self._write_paused:
            if self._expired:
                raise TimeoutError
            waiter = self._event_loop().create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None
            if self._lost:
                raise ConnectionResetError("connection lost")

    def close(self) -> None:
        """Close after the pending output is written (over TLS: with close_notify, see `start_tls`)."""
        if self._deadline is not None:
            self.set_deadline(None)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        tls = self._tls
        if tls is None:
            transport.close()
        elif tls.state is _TlsState.OPEN:
            self._tls_start_shutdown(tls)
        elif tls.state is _TlsState.HANDSHAKE:
            self._tls_done(tls, False)
            transport.abort()

    def abort(self) -> None:
        if self._deadline is not None:
            self.set_deadline(None)
        tls = self._tls
        if tls is not None and tls.state is not _TlsState.CLOSED:
            self._tls_done(tls, False)
        if self.transport is not None:
            self.transport.abort()

    def _received(self, data: bytes) -> None:
        """Plaintext from the peer: to the relay, or into the buffer for `read()`."""
        relay = self._relay
        if relay is not None:
            relay.forward(self, data)
            return
        self._buffer += data
        if (
            len(self._buffer) > _BUFFERED_READ_PAUSE
            and self.transport is not None
            and not self._reading_paused
        ):
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _input_ended(self) -> None:
        """The peer sends no more (a TCP EOF, or a TLS close_notify)."""
        self._eof = True
        self._wake_reader()
        if self._relay is not None:
            self._relay.end_of_input(self)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drainer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- TLS

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The connection's TLS state once `start_tls` was called, else None."""
        return self._tls.ssl_object if self._tls is not None else None

    async def start_tls(self, context: ssl.SSLContext, timeout: float, shutdown_timeout: float) -> bool:
        """Be the server end of TLS from now on: run the handshake, then read and write plaintext as before.

        True once the handshake is done; False when the connection was closed without an error meanwhile.
        A failed handshake raises its error (what the context's SSLObject raised, ConnectionResetError for
        an EOF, TimeoutError after `timeout` seconds) and aborts the connection. Bytes received but not read
        yet are the first TLS input (a ClientHello that came with the connection); reading is resumed. The
        TLS layer works on memory BIOs over the plain transport, as uvloop's does, without its 256 KiB read
        buffer per connection. `close()` then sends close_notify and waits `shutdown_timeout` seconds at most
        for the client's before closing the connection; an EOF or a TLS error closes it at once.
        """
        transport = self.transport
        if transport is None or self._lost:
            return False
        loop = self._event_loop()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = context.wrap_bio(incoming, outgoing, server_side=True)
        tls = _Tls(ssl_object, incoming, outgoing, loop.create_future(), shutdown_timeout)
        self._tls = tls
        if self._buffer:
            incoming.write(self._buffer)
            self._buffer.clear()
        transport.set_write_buffer_limits(_TLS_WRITE_HIGH_WATER, _TLS_WRITE_LOW_WATER)
        tls.timer = loop.call_later(timeout, self._tls_timed_out, tls)
        waiter = tls.handshake
        assert waiter is not None
        self._tls_handshake(tls)
        if not transport.is_closing():
            transport.resume_reading()  # STARTTLS paused it to keep the ClientHello in the socket
        return await waiter

    def _tls_handshake(self, tls: _Tls) -> None:
        try:
            tls.ssl_object.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._tls_flush(tls)
            return
        except Exception as error:  # the context's SSLObject sent its alert, or it waits in the BIO
            self._tls_flush(tls)
            self._tls_failed(tls, error)
            return
        tls.state = _TlsState.OPEN
        self._tls_flush(tls)
        self._tls_done_handshake(tls, True)
        if tls.incoming.pending:
            self._tls_read(tls)  # the client's first request came with its Finished

    def _tls_read(self, tls: _Tls) -> None:
        ssl_object, incoming = tls.ssl_object, tls.incoming
        received: list[bytes] = []
        close_notify = False
        try:
            while incoming.pending or ssl_object.pending():
                chunk = ssl_object.read(_TLS_READ_SIZE)
                if not chunk:
                    close_notify = True
                    break
                received.append(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLZeroReturnError:
            close_notify = True
        except Exception as error:
            self._tls_flush(tls)
            self._tls_failed(tls, error)
            return
        if tls.backlog:
            self._tls_write_backlog(tls)
        self._tls_flush(tls)
        if received:
            self._received(received[0] if len(received) == 1 else b"".join(received))
        if close_notify and tls.state is _TlsState.OPEN:
            self._input_ended()
            if tls.state is _TlsState.OPEN:
                self._tls_start_shutdown(tls)

    def _tls_write_backlog(self, tls: _Tls) -> None:
        while tls.backlog:
            try:
                tls.ssl_object.write(tls.backlog[0])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            del tls.backlog[0]

    def _tls_flush(self, tls: _Tls) -> None:
        if tls.outgoing.pending and self.transport is not None:
            self.transport.write(tls.outgoing.read())

    def _tls_start_shutdown(self, tls: _Tls) -> None:
        tls.state = _TlsState.CLOSING
        if tls.timer is not None:
            tls.timer.cancel()
        tls.timer = self._event_loop().call_later(tls.shutdown_timeout, self._tls_timed_out, tls)
        self._tls_shutdown(tls)

    def _tls_shutdown(self, tls: _Tls) -> None:
        """Send our close_notify once everything written is sent, then wait for the client's."""
        ssl_object = tls.ssl_object
        try:
            try:  # application data that still arrives is dropped
                while ssl_object.read(_TLS_READ_SIZE):
                    pass
                close_notify = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                close_notify = False
            except ssl.SSLZeroReturnError:
                close_notify = True
            if close_notify and not self._eof:
                self._input_ended()
            if tls.backlog:
                self._tls_write_backlog(tls)
                if tls.backlog:
                    self._tls_flush(tls)
                    return
            try:
                ssl_object.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self._tls_flush(tls)
                return
        except Exception as error:
            self._tls_failed(tls, error)
            return
        self._tls_flush(tls)
        self._tls_done(tls)
        if self.transport is not None:
            self.transport.close()

    def _tls_timed_out(self, tls: _Tls) -> None:
        tls.timer = None
        if tls.state is _TlsState.HANDSHAKE:
            self._tls_failed(tls, TimeoutError())
        elif tls.state is _TlsState.CLOSING:
            self._tls_failed(tls, TimeoutError("SSL shutdown timed out"))

    def _tls_failed(self, tls: _Tls, error: BaseException) -> None:
        """The connection ends at once: the handshake raises `error`, a reader gets it as the cause."""
        if tls.state is not _TlsState.HANDSHAKE:
            self._error = error
        self._tls_done(tls, error)
        if self.transport is not None:
            self.transport.abort()

    def _tls_done(self, tls: _Tls, handshake: BaseException | bool = False) -> None:
        """TLS is over on this connection; a pending handshake ends with `handshake` (an error or a bool)."""
        tls.state = _TlsState.CLOSED
        if tls.timer is not None:
            tls.timer.cancel()
            tls.timer = None
        self._tls_done_handshake(tls, handshake)

    def _tls_done_handshake(self, tls: _Tls, outcome: BaseException | bool) -> None:
        waiter = tls.handshake
        if waiter is None:
            return
        tls.handshake = None
        if tls.timer is not None and outcome is True:
            tls.timer.cancel()
            tls.timer = None
        if waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


class _TlsState(enum.Enum):
    HANDSHAKE = 1
    OPEN = 2
    CLOSING = 3  # our close_notify is out (or waiting for the backlog); waiting for the client's
    CLOSED = 4


class _Tls:
    """A Peer's TLS connection: the SSLObject, its memory BIOs and where it stands."""

    __slots__ = (
        "backlog",
        "handshake",
        "incoming",
        "outgoing",
        "shutdown_timeout",
        "ssl_object",
        "state",
        "timer",
    )

    def __init__(
        self,
        ssl_object: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        handshake: asyncio.Future[bool],
        shutdown_timeout: float,
    ) -> None:
        self.ssl_object = ssl_object
        self.incoming = incoming
        self.outgoing = outgoing
        self.handshake: asyncio.Future[bool] | None = handshake
        self.shutdown_timeout = shutdown_timeout
        self.state = _TlsState.HANDSHAKE
        self.timer: asyncio.TimerHandle | None = None
        self.backlog: list[bytes] = []


@dataclass(frozen=True)
class RelayOutcome:
    """Why a relay ended and how many bytes crossed it each way."""

    reason: str  # "backend closed", "client closed", "timed out", "shutdown"
    client_to_backend: int
    backend_to_client: int
    client_error: OSError | None = None  # the client's connection ended in an error (a reset)


class Relay:
    """Pipes two Peers into each other until one side ends (see the module docstring for the rules)."""

    def __init__(
        self, client: Peer, backend: Peer, timeout: float, on_timeout: Callable[[], None] | None = None
    ) -> None:
        """`on_timeout` runs just before the sides are closed for `proxy_timeout` (a TLS client is then
        closed without close_notify, as nginx closes a connection that timed out)."""
        self._on_timeout = on_timeout
        self._client = client
        self._backend = backend
        self._timeout = timeout
        self._loop = client._event_loop()
        self._done: asyncio.Future[str] = self._loop.create_future()
        self._last_activity = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._backend_owed_eof = False  # the client half-closed; the backend is told once all is quiet
        self.client_to_backend = 0
        self.backend_to_client = 0

    async def run(self, to_client: bytes, to_backend: bytes) -> RelayOutcome:
        """Start relaying, first writing the bytes each side is owed, and wait for the end."""
        client, backend = self._client, self._backend
        to_client += backend.take_buffered()
        to_backend += client.take_buffered()
        client._relay = self
        backend._relay = self
        if to_client:
            self.forward(backend, to_client)
        if to_backend:
            self.forward(client, to_backend)
        for peer in (client, backend):
            if peer.is_closed:
                self.lost(peer)
            elif peer._eof:
                self.end_of_input(peer)
        self._arm_timer()
        try:
            reason = await self._done
        finally:
            if self._timer is not None:
                self._timer.cancel()
            client._relay = None
            backend._relay = None
        return RelayOutcome(
            reason, self.client_to_backend, self.backend_to_client, self._client.receive_error
        )

    def stop(self, reason: str) -> None:
        """End the relay from outside (a shutdown deadline): both sides are closed."""
        self._finish(reason)

    # -- called by the peers

    def forward(self, source: Peer, data: bytes) -> None:
        target = self._backend if source is self._client else self._client
        if target.is_closed:
            return
        target.write(data)
        if source is self._client:
            self.client_to_backend += len(data)
        else:
            self.backend_to_client += len(data)
        self._last_activity = self._loop.time()

    def end_of_input(self, peer: Peer) -> None:
        if self._done.done():
            return
        if peer is self._backend:
            self._finish("backend closed")
            return
        backend_transport = self._backend.transport
        if (
            backend_transport is not None
            and backend_transport.can_write_eof()
            and not self._backend.is_closed
        ):
            self._backend_owed_eof = True
            self._arm_timer()
        else:
            self._finish("client closed")

    def lost(self, peer: Peer) -> None:
        if not self._done.done():
            self._finish("client closed" if peer is self._client else "backend closed")

    def pause_towards(self, target: Peer) -> None:
        source = self._backend if target is self._client else self._client
        if source.transport is not None and not source.is_closed:
            source.transport.pause_reading()

    def resume_towards(self, target: Peer) -> None:
        source = self._backend if target is self._client else self._client
        if source.transport is not None and not source.is_closed:
            source.transport.resume_reading()

    # -- internals

    def _finish(self, reason: str) -> None:
        if self._done.done():
            return
        # Closing flushes what is queued, so bytes already relayed still reach their destination.
        self._backend.close()
        self._client.close()
        self._done.set_result(reason)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        quiet = min(self._timeout, HALF_CLOSE_QUIET) if self._backend_owed_eof else self._timeout
        self._timer = self._loop.call_at(self._last_activity + quiet, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        if self._done.done():
            return
        now = self._loop.time()
        if now >= self._last_activity + self._timeout:
            if self._on_timeout is not None:
                self._on_timeout()
            self._finish("timed out")
            return
        if self._backend_owed_eof and now >= self._last_activity + HALF_CLOSE_QUIET:
            self._backend_owed_eof = False
            self._pass_half_close()
        self._arm_timer()

    def _pass_half_close(self) -> None:
        transport = self._backend.transport
        if transport is not None and not transport.is_closing() and not self._backend.is_closed:
            transport.write_eof()  # sent after the bytes still queued
