"""The two ends of a proxied session, and the byte relay between them (the I/O itself is in C: `_io.c`).

`Peer` is one connection of a session, the client's or the backend's, on a `Reactor` (one per event loop,
watched by the loop). Before the relay it is read on demand, `await peer.read()`, so the pre-auth engine and
the backend login are driven step by step and nothing more is read from a client than its commands ask for
(as nginx reads nothing while a reply is pending). A client's TLS is terminated in its `Peer` too
(`start_tls`), on the connection's own socket.

`Relay` pipes two Peers into each other in C, with back-pressure: when one side's output holds too much, the
other side is not read until it drains. The relay ends, as in nginx, when the backend closes (after
everything it sent has been written to the client), when the client is gone, or after `proxy_timeout`
without any transfer. Beyond nginx, a client that half-closes (shuts down its sending side) still gets every
byte the backend sends until the backend closes. The half-close is passed on to the backend once nothing has
crossed the relay for `HALF_CLOSE_QUIET` seconds, not at once: a backend that reads the EOF while replies to
pipelined commands are still queued may end the session there (Dovecot drops a connection on EOF whatever
it still has to send), so the backend gets the time to answer everything the client sent first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from mailgate import _io
from mailgate._io import HALF_CLOSE_QUIET, Peer, Reactor
from mailgate.proxy.backend_login import FinalReply
from mailgate.tls.failures import tls_failure

__all__ = ["HALF_CLOSE_QUIET", "Peer", "Reactor", "Relay", "RelayOutcome", "reactor_of"]

_io.set_tls_failure_factory(tls_failure)

_reactors: dict[int, tuple[asyncio.AbstractEventLoop, Reactor]] = {}


def reactor_of(loop: asyncio.AbstractEventLoop) -> Reactor:
    """The reactor of `loop`'s connections, made and watched by the loop on first use (the reactors of
    loops closed since are closed then)."""
    entry = _reactors.get(id(loop))
    if entry is not None and entry[0] is loop:
        return entry[1]
    for key, (other, stale) in list(_reactors.items()):
        if other.is_closed() or key == id(loop):
            stale.close()
            del _reactors[key]
    reactor = Reactor(loop)
    loop.add_reader(reactor.fileno(), reactor.process)
    _reactors[id(loop)] = (loop, reactor)
    return reactor


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """Why a relay ended and how many bytes crossed it each way."""

    reason: str  # "backend closed", "client closed", "timed out", "shutdown"
    client_to_backend: int
    backend_to_client: int
    client_error: OSError | None = None  # the client's connection ended in an error (a reset)


class Relay:
    """Pipes two Peers into each other until one side ends (see the module docstring for the rules)."""

    __slots__ = ("_relay",)

    def __init__(
        self, client: Peer, backend: Peer, timeout: float, *, quiet_on_timeout: bool = False
    ) -> None:
        """`quiet_on_timeout`: when `proxy_timeout` ends the relay, a TLS client is closed without
        close_notify, as nginx closes a connection that timed out."""
        self._relay = _io.Relay(client, backend, timeout, quiet_on_timeout)

    @classmethod
    def of(cls, relay: _io.Relay) -> Relay:
        """The relay a connection made itself (`Peer.read_auth_then_login`)."""
        wrapper = cls.__new__(cls)
        wrapper._relay = relay
        return wrapper

    @property
    def running(self) -> bool:
        """Started (by `run` or after a login) and not ended yet."""
        return self._relay.running

    async def run(self, to_client: bytes, to_backend: bytes) -> RelayOutcome:
        """Start relaying, first writing the bytes each side is owed, and wait for the end."""
        return RelayOutcome(*await self._relay.run(to_client, to_backend))

    async def run_after_login(
        self,
        answers: tuple[tuple[bytes, bytes], ...],
        capacity: int,
        final: FinalReply,
        to_backend: bytes,
        on_start: Callable[[], object] | None = None,
    ) -> bytes | RelayOutcome:
        """The backend's `Peer.exchange(answers, capacity)` and then, when the login's final reply starts
        with `final.prefix`, the relay (as `run`, the client getting the reply or `final.replacement` in
        place of its first line), all without waking the caller: the relay's outcome once it ends.
        Otherwise the reply the caller is to judge (as `exchange` resolves), and the relay has not run."""
        result = await self._relay.run_after_login(
            answers, capacity, final.prefix, final.replacement, to_backend, on_start
        )
        return result if isinstance(result, bytes) else RelayOutcome(*result)

    def stop(self, reason: str) -> None:
        """End the relay from outside (a shutdown deadline): both sides are closed."""
        self._relay.stop(reason)
