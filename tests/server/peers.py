"""Test helpers: Peers on loopback, accepted and connected the way sessions make them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from mailgate.proxy.relay import Peer, reactor_of

PeerHandler = Callable[[Peer], Coroutine[Any, Any, None]]
T = TypeVar("T")

# An IMAP backend login's replies answered by prefix (Peer.exchange steps) for user "bob", password "pw".
IMAP_LOGIN_STEPS = ((b"* OK", b"a LOGIN {3}\r\n"), (b"+", b"bob {2}\r\n"), (b"+", b"pw\r\n"))


class PeerServer:
    """Accepts on 127.0.0.1 and hands each connection, as a Peer, to `handler` in a task of its own."""

    def __init__(self, handler: PeerHandler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.tasks: list[asyncio.Task[None]] = []
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            self.tasks.append(loop.create_task(self.handler(Peer(reactor_of(loop), sock.detach()))))

    def close(self) -> None:
        self._accepting.cancel()
        self.listener.close()


async def connect_peer(port: int) -> Peer:
    """A Peer connected to 127.0.0.1:`port`, its connect awaited."""
    peer = Peer.connect(reactor_of(asyncio.get_running_loop()), socket.AF_INET, "127.0.0.1", port)
    await peer.connected()
    return peer


def connecting_peer() -> tuple[socket.socket, Peer]:
    """A non-blocking listener on 127.0.0.1 and a Peer whose connect to it is under way (not accepted yet)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    peer = Peer.connect(reactor_of(asyncio.get_running_loop()), socket.AF_INET, "127.0.0.1", port)
    return listener, peer


async def expect(sock: socket.socket, expected: bytes) -> None:
    """The (non-blocking) socket receives `expected` next."""
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < len(expected):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, len(expected) - len(data)), 5)
        assert chunk
        data += chunk
    assert data == expected


def client_pair() -> tuple[socket.socket, Peer]:
    """A client connection as a session has it: the test's (non-blocking) end and the Peer of the other."""
    test_end, peer_end = socket.socketpair()
    test_end.setblocking(False)
    peer_end.setblocking(False)  # as accepted connections are
    return test_end, Peer(reactor_of(asyncio.get_running_loop()), peer_end.detach())


async def started(operation: Coroutine[Any, Any, T] | asyncio.Future[T]) -> asyncio.Future[T]:
    """`operation` under way (what it does before its first wait is done)."""
    future = asyncio.ensure_future(operation)
    await asyncio.sleep(0)
    return future


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a test's coroutine on uvloop, as workers run sessions, within a minute."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro, 60))


async def wait_for(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)
