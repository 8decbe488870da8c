"""The two ends of a proxied session, and the byte relay between them.

`Peer` is an asyncio protocol with two modes. Before the relay it buffers what arrives and hands it out with
`await read()`, so the pre-auth engine and the backend login can be driven step by step. During the relay it
forwards every chunk straight to the other end's transport as it arrives (no copy into a Python buffer), with
back-pressure: when one side's transport buffers too much, the other side stops reading until it drains.

The relay ends, as in nginx, when the backend closes (after everything it sent has been written to the
client), when the client is gone, or after `proxy_timeout` without any transfer. Beyond nginx, a client that
half-closes (shuts down its sending side) still gets every byte the backend sends until the backend closes:
the half-close is passed on to the backend, so nothing in flight is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

# Stop reading a client that sends faster than the pre-auth engine consumes (the engine's own buffer limits
# decide what is too long; this only bounds memory while it works).
_BUFFERED_READ_PAUSE = 256 * 1024


class Peer(asyncio.Protocol):
    """One connection of a session (the client's or the backend's)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._relay: Relay | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
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

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        if self._relay is not None:
            self._relay.end_of_input(self)
        # Keep our sending side open so a half-closed client still gets its replies. TLS has no half-close:
        # its transport closes after EOF whatever we answer, and warns when told otherwise.
        transport = self.transport
        return transport is None or transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
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

    async def read(self) -> bytes:
        """Everything received so far (waiting for at least one byte); b"" once the peer has closed."""
        while not self._buffer and not self._eof:
            waiter = asyncio.get_running_loop().create_future()
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
        if self.transport is not None and not self._lost and data:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport has taken the written bytes (ConnectionError if the peer is gone)."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        while self._write_paused:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None
            if self._lost:
                raise ConnectionResetError("connection lost")

    def close(self) -> None:
        """Close after the pending output is written (a TLS transport sends close_notify first)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drainer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


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
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[str] = self._loop.create_future()
        self._last_activity = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
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
            backend_transport.write_eof()  # sent after the bytes already queued
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
        self._timer = self._loop.call_at(self._last_activity + self._timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        if self._done.done():
            return
        if self._loop.time() >= self._last_activity + self._timeout:
            if self._on_timeout is not None:
                self._on_timeout()
            self._finish("timed out")
        else:
            self._arm_timer()
