"""Peer.exchange: replies answered by the connection before a read resolves (the backend login's steps)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mailgate.proxy.relay import Peer
from tests.server.peers import IMAP_LOGIN_STEPS, connecting_peer, expect, run

LOGIN = IMAP_LOGIN_STEPS


async def backend_and_peer() -> tuple[socket.socket, Peer]:
    """A blocking-free backend socket and the Peer connected to it."""
    listener, peer = connecting_peer()
    backend, _ = await asyncio.get_running_loop().sock_accept(listener)
    listener.close()
    await peer.connected()
    return backend, peer


def test_each_reply_starting_with_its_prefix_is_answered_and_the_next_one_is_read() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        loop = asyncio.get_running_loop()
        exchanged = peer.exchange(LOGIN, 4096)
        await loop.sock_sendall(backend, b"* OK ready\r\n")
        await expect(backend, b"a LOGIN {3}\r\n")
        await loop.sock_sendall(backend, b"+ go\r\n")
        await expect(backend, b"bob {2}\r\n")
        await loop.sock_sendall(backend, b"+ \r\n")
        await expect(backend, b"pw\r\n")
        assert not exchanged.done()
        await loop.sock_sendall(backend, b"a OK in\r\n")
        assert await exchanged == b"a OK in\r\n"
        assert peer.exchanged == 3
        await loop.sock_sendall(backend, b"* 1 EXISTS\r\n")
        assert await peer.read() == b"* 1 EXISTS\r\n"  # a plain read again
        backend.close()
        peer.close()

    run(main())


def test_a_reply_is_answered_once_it_holds_four_bytes_and_ends_with_crlf() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        exchanged = peer.exchange(LOGIN[:1], 4096)
        for piece in (b"* O", b"K", b" hi\r", b"\n"):
            assert not exchanged.done()
            backend.send(piece)
            await asyncio.sleep(0.05)
        await expect(backend, b"a LOGIN {3}\r\n")
        backend.send(b"\r\n")  # too short to be a reply: still what the next reply's read returns
        backend.send(b"a NO\r\n")
        assert await exchanged in (b"\r\n", b"\r\na NO\r\n")
        assert peer.exchanged == 1
        backend.close()
        peer.close()

    run(main())


@pytest.mark.parametrize(
    ("reply", "answered"),
    [
        (b"* BYE go away\r\n", 0),  # another reply: to the engine, unanswered
        (b"* OK\r\n", 1),  # answered; the read waits for the next
        (b"* OK " + b"x" * 30 + b"\r\n", 0),  # not shorter than the capacity: to the engine
    ],
)
def test_a_reply_no_step_accepts_or_too_long_is_returned_unanswered(reply: bytes, answered: int) -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        exchanged = peer.exchange(LOGIN[:1], 32)
        backend.send(reply)
        if answered:
            await expect(backend, b"a LOGIN {3}\r\n")
            backend.send(b"a NO\r\n")
            assert await exchanged == b"a NO\r\n"
        else:
            assert await exchanged == reply
        assert peer.exchanged == answered
        backend.setblocking(False)
        with pytest.raises(BlockingIOError):
            backend.recv(100)  # nothing more was sent
        backend.close()
        peer.close()

    run(main())


def test_lines_after_an_answered_reply_in_the_same_read_are_dropped_as_nginx_does() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        backend.send(b"* OK hi\r\n* CAPABILITY IMAP4rev1\r\n")
        await asyncio.sleep(0.05)
        exchanged = peer.exchange(LOGIN, 4096)
        await expect(backend, b"a LOGIN {3}\r\n")
        backend.send(b"- no\r\n")
        assert await exchanged == b"- no\r\n"
        assert peer.exchanged == 1
        backend.close()
        peer.close()

    run(main())


def test_bytes_already_read_are_answered_at_once() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        peer.unread(b"* OK hello\r\n")
        exchanged = peer.exchange(LOGIN, 4096)
        await expect(backend, b"a LOGIN {3}\r\n")
        assert not exchanged.done()
        backend.close()
        assert await exchanged == b""
        assert peer.exchanged == 1
        peer.close()

    run(main())


def test_the_backend_closing_mid_reply_returns_the_partial_reply_then_eof() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        exchanged = peer.exchange(LOGIN, 4096)
        backend.send(b"* OK")
        backend.close()
        assert await exchanged == b"* OK"
        assert peer.exchanged == 0
        assert await peer.read() == b""
        peer.close()

    run(main())


def test_the_deadline_fails_the_exchange_and_counts_what_was_answered() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        loop = asyncio.get_running_loop()
        peer.set_deadline(loop.time() + 0.3)
        exchanged = peer.exchange(LOGIN, 4096)
        backend.send(b"* OK\r\n")
        with pytest.raises(TimeoutError):
            await exchanged
        assert peer.exchanged == 1
        await expect(backend, b"a LOGIN {3}\r\n")
        backend.close()
        peer.close()

    run(main())


def test_exchange_takes_pairs_of_bytes_and_no_tls_connection() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        with pytest.raises(TypeError):
            peer.exchange(((b"+", "text"),), 4096)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            peer.exchange(((b"+",),), 4096)  # type: ignore[arg-type]
        exchanged = peer.exchange((), 4096)
        with pytest.raises(RuntimeError):
            peer.exchange(LOGIN, 4096)  # already reading
        backend.send(b"x")
        assert await exchanged == b"x"
        backend.close()
        peer.close()

    run(main())


def test_a_three_byte_reply_waits_for_more_as_nginx_does() -> None:
    async def main() -> None:
        backend, peer = await backend_and_peer()
        exchanged = peer.exchange(LOGIN[1:2], 4096)
        backend.send(b"+\r\n")
        await asyncio.sleep(0.1)
        assert not exchanged.done()
        backend.send(b"+\r\n")
        await expect(backend, b"bob {2}\r\n")  # judged as one reply of two lines
        backend.send(b"ok\r\n")
        assert await exchanged == b"ok\r\n"
        backend.close()
        peer.close()

    run(main())
