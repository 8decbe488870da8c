"""A connection under way (Peer.connect) takes writes, reads and exchanges before it is connected: they wait
for the connect, and `failed_in` says whether the connect or a send broke it."""

from __future__ import annotations

import asyncio
import errno
import socket

from mailgate.proxy.relay import Peer, reactor_of
from tests.server.peers import connecting_peer, expect, run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_what_is_written_before_the_connect_is_sent_once_connected_and_the_read_gets_the_reply() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener, peer = connecting_peer()
        peer.write(b"GET /auth HTTP/1.0\r\n")
        peer.write(b"\r\n")
        reply = asyncio.ensure_future(peer.read())  # waited for before the connect completed
        backend, _ = await loop.sock_accept(listener)
        listener.close()
        await expect(backend, b"GET /auth HTTP/1.0\r\n\r\n")  # in order, whole
        await loop.sock_sendall(backend, b"HTTP/1.0 200 OK\r\n\r\n")
        assert await asyncio.wait_for(reply, 5) == b"HTTP/1.0 200 OK\r\n\r\n"
        assert peer.failed_in is None
        backend.close()
        assert await asyncio.wait_for(peer.read(), 5) == b""
        assert peer.failed_in is None and peer.receive_error is None  # a clean end is no failure
        peer.close()

    run(main())


def test_a_refused_connect_ends_the_waiting_read_and_is_told_apart() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer = Peer.connect(reactor_of(loop), socket.AF_INET, "127.0.0.1", free_port())
        peer.write(b"request\r\n")
        assert await asyncio.wait_for(peer.read(), 5) == b""
        assert peer.failed_in == "connect"
        assert isinstance(peer.receive_error, OSError)
        assert peer.receive_error.errno == errno.ECONNREFUSED
        peer.close()

    run(main())


def test_an_exchange_started_while_connecting_answers_the_greeting() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener, peer = connecting_peer()
        peer.write(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")  # a header written first stays first
        exchanged = asyncio.ensure_future(peer.exchange(((b"* OK", b"a LOGIN bob pw\r\n"),), 4096))
        backend, _ = await loop.sock_accept(listener)
        listener.close()
        await loop.sock_sendall(backend, b"* OK ready\r\n")
        await expect(backend, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\na LOGIN bob pw\r\n")
        await loop.sock_sendall(backend, b"a OK\r\n")
        assert await asyncio.wait_for(exchanged, 5) == b"a OK\r\n"
        assert peer.exchanged == 1
        backend.close()
        peer.close()

    run(main())


def test_the_deadline_ends_a_read_waiting_for_a_connect_that_never_completes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A listener whose backlog is full: the kernel drops further SYNs, so that connect stays under way.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        peer = Peer.connect(reactor_of(loop), socket.AF_INET, "127.0.0.1", port)
        peer.set_deadline(loop.time() + 0.3)
        peer.write(b"request\r\n")
        reading = asyncio.ensure_future(peer.read())
        done, _ = await asyncio.wait([reading], timeout=5)  # the test's own bound, not the peer's deadline
        peer.close()
        for filler in fillers:
            filler.close()
        listener.close()
        assert done and isinstance(reading.exception(), TimeoutError)
        assert peer.failed_in is None  # timed out, not failed

    run(main())
