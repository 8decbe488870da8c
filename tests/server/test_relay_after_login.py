"""Relay.run_after_login: the backend login's last reply accepted by the connection, and the relay started
there, without waking the session (real loopback sockets, uvloop)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mailgate.proxy.backend_login import SMTP_AUTH_OK, FinalReply
from mailgate.proxy.relay import Relay, RelayOutcome
from tests.server.peers import IMAP_LOGIN_STEPS, client_pair, connecting_peer, expect, run, started

LOGIN = IMAP_LOGIN_STEPS
TAGGED_OK = FinalReply(b"a OK", None)


async def relay_outcome(done: asyncio.Future[bytes | RelayOutcome]) -> RelayOutcome:
    outcome = await asyncio.wait_for(done, 5)
    assert isinstance(outcome, RelayOutcome)
    return outcome


def is_running(relay: Relay) -> bool:
    return relay.running


class Pair:
    """A session's two connections: the client's (a Peer and the test's end) and the backend's (a Peer
    whose connect is under way, and the test's backend socket once accepted)."""

    def __init__(self) -> None:
        self.client, self.client_peer = client_pair()
        self.listener, self.backend_peer = connecting_peer()
        self.backend: socket.socket | None = None
        self.started: list[bytes] = []  # what the client had received when on_start was called

    async def accept(self) -> socket.socket:
        self.backend, _ = await asyncio.get_running_loop().sock_accept(self.listener)
        self.listener.close()
        return self.backend

    def on_start(self) -> None:
        self.client.setblocking(False)
        try:
            self.started.append(self.client.recv(100, socket.MSG_PEEK))
        except BlockingIOError:
            self.started.append(b"")

    def close(self) -> None:
        for sock in (self.client, self.backend):
            if sock is not None:
                sock.close()
        self.client_peer.close()
        self.backend_peer.close()


def test_an_accepted_last_reply_starts_the_relay_and_the_future_resolves_when_it_ends() -> None:
    async def main() -> None:
        pair = Pair()
        loop = asyncio.get_running_loop()
        pair.backend_peer.set_deadline(loop.time() + 0.5)  # the login's deadline: it ends with the login
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        done = await started(relay.run_after_login(LOGIN, 4096, TAGGED_OK, b"a2 NOOP\r\n", pair.on_start))
        backend = await pair.accept()
        for reply, answer in ((b"* OK hi\r\n", b"a LOGIN {3}\r\n"), (b"+ \r\n", b"bob {2}\r\n")):
            await loop.sock_sendall(backend, reply)
            await expect(backend, answer)
        await loop.sock_sendall(backend, b"+ \r\n")
        await expect(backend, b"pw\r\n")
        assert not is_running(relay)
        await loop.sock_sendall(backend, b"a OK [CAPABILITY IMAP4rev1] in\r\n")
        await expect(pair.client, b"a OK [CAPABILITY IMAP4rev1] in\r\n")
        assert is_running(relay)
        assert pair.started == [b""]  # called once, before the client got the reply
        await expect(backend, b"a2 NOOP\r\n")  # the client's pipelined bytes, then what it sends
        await asyncio.sleep(0.6)  # past the login's deadline: the relay goes on
        await loop.sock_sendall(pair.client, b"a3 LOGOUT\r\n")
        await expect(backend, b"a3 LOGOUT\r\n")
        await loop.sock_sendall(backend, b"* BYE\r\na3 OK\r\n")
        await expect(pair.client, b"* BYE\r\na3 OK\r\n")
        backend.close()
        outcome = await relay_outcome(done)
        received = len(b"a OK [CAPABILITY IMAP4rev1] in\r\n* BYE\r\na3 OK\r\n")
        assert outcome == RelayOutcome("backend closed", len(b"a2 NOOP\r\na3 LOGOUT\r\n"), received)
        assert not is_running(relay)
        assert pair.backend_peer.exchanged == 3
        pair.close()

    run(main())


@pytest.mark.parametrize(
    "reply",
    [
        b"a NO [AUTHENTICATIONFAILED] no\r\n",  # not the prefix: the session judges it
        b"* CAPABILITY IMAP4rev1\r\na OK in\r\n",  # an untagged line first: the session judges it too
        b"a OK " + b"x" * 40 + b"\r\n",  # not shorter than the capacity
    ],
)
def test_a_last_reply_not_accepted_resolves_the_future_with_it_and_the_relay_does_not_start(
    reply: bytes,
) -> None:
    async def main() -> None:
        pair = Pair()
        loop = asyncio.get_running_loop()
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        done = await started(relay.run_after_login(LOGIN[:1], 32, TAGGED_OK, b"", pair.on_start))
        backend = await pair.accept()
        await loop.sock_sendall(backend, b"* OK hi\r\n")
        await expect(backend, b"a LOGIN {3}\r\n")
        await loop.sock_sendall(backend, reply)
        assert await asyncio.wait_for(done, 5) == reply
        assert not is_running(relay)
        assert pair.started == []
        pair.client.setblocking(False)
        with pytest.raises(BlockingIOError):
            pair.client.recv(100)  # the client got nothing
        # The session may still relay (after judging the reply itself).
        relayed = await started(relay.run(b"to client\r\n", b""))
        await expect(pair.client, b"to client\r\n")
        backend.close()
        assert (await asyncio.wait_for(relayed, 5)).reason == "backend closed"
        pair.close()

    run(main())


def test_the_last_reply_is_accepted_once_it_holds_four_bytes_and_ends_with_crlf() -> None:
    async def main() -> None:
        pair = Pair()
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        done = await started(relay.run_after_login((), 4096, FinalReply(b"+OK", None), b"", None))
        backend = await pair.accept()
        for piece in (b"+O", b"K", b" in\r", b"\n"):
            assert not is_running(relay)
            backend.send(piece)
            await asyncio.sleep(0.05)
        await expect(pair.client, b"+OK in\r\n")
        assert is_running(relay)
        backend.close()
        assert (await relay_outcome(done)).reason == "backend closed"
        pair.close()

    run(main())


def test_a_replacement_takes_the_place_of_the_reply_first_line_and_the_rest_follows() -> None:
    async def main() -> None:
        pair = Pair()
        loop = asyncio.get_running_loop()
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        steps = ((b"220 ", b"EHLO mx\r\n"),)
        done = await started(relay.run_after_login(steps, 4096, FinalReply(b"235 ", SMTP_AUTH_OK), b"", None))
        backend = await pair.accept()
        await loop.sock_sendall(backend, b"220 mx ESMTP\r\n")
        await expect(backend, b"EHLO mx\r\n")
        await loop.sock_sendall(backend, b"235 2.7.0 Authentication successful\r\n250 early\r\n")
        await expect(pair.client, SMTP_AUTH_OK + b"250 early\r\n")
        backend.close()
        assert await relay_outcome(done) == RelayOutcome("backend closed", 0, len(SMTP_AUTH_OK) + 11)
        pair.close()

    run(main())


def test_a_reply_read_already_is_taken_at_once() -> None:
    async def main() -> None:
        pair = Pair()
        backend = await pair.accept()
        await pair.backend_peer.connected()
        pair.backend_peer.unread(b"+OK ready\r\n")
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        done = await started(
            relay.run_after_login((), 4096, FinalReply(b"+OK", None), b"USER x\r\n", pair.on_start)
        )
        assert is_running(relay)
        assert pair.started == [b""]
        await expect(pair.client, b"+OK ready\r\n")
        await expect(backend, b"USER x\r\n")
        backend.close()
        outcome = await relay_outcome(done)
        assert outcome == RelayOutcome("backend closed", 8, 11)
        pair.close()

    run(main())


def test_the_backend_closing_before_its_last_reply_resolves_the_future_with_nothing() -> None:
    async def main() -> None:
        pair = Pair()
        loop = asyncio.get_running_loop()
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        done = await started(relay.run_after_login(LOGIN[:1], 4096, TAGGED_OK, b"", pair.on_start))
        backend = await pair.accept()
        await loop.sock_sendall(backend, b"* OK hi\r\n")
        await expect(backend, b"a LOGIN {3}\r\n")
        backend.close()
        assert await asyncio.wait_for(done, 5) == b""
        assert not is_running(relay)
        assert pair.started == []
        pair.close()

    run(main())


def test_the_login_deadline_still_ends_a_login_whose_last_reply_never_comes() -> None:
    async def main() -> None:
        pair = Pair()
        loop = asyncio.get_running_loop()
        pair.backend_peer.set_deadline(loop.time() + 0.2)
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        done = await started(relay.run_after_login(LOGIN[:1], 4096, TAGGED_OK, b"", pair.on_start))
        backend = await pair.accept()
        await loop.sock_sendall(backend, b"* OK hi\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(done, 5)
        assert not is_running(relay)
        pair.close()

    run(main())


def test_a_relay_waiting_for_the_login_cannot_be_started_twice() -> None:
    async def main() -> None:
        pair = Pair()
        relay = Relay(pair.client_peer, pair.backend_peer, 30.0)
        waiting = await started(relay.run_after_login((), 4096, TAGGED_OK, b"", None))
        with pytest.raises(RuntimeError):
            await relay.run(b"", b"")
        with pytest.raises(RuntimeError):
            await relay.run_after_login((), 4096, TAGGED_OK, b"", None)
        pair.close()
        assert await asyncio.wait_for(waiting, 5) == b""

    run(main())
