"""Peer.read_auth_then_login: the usual auth success taken by the auth connection, which then connects to
the backend it names, logs in and relays without waking the session; every other reply goes to the
session's reader unchanged (real loopback sockets, uvloop)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import pytest

from tests.server.peers import IMAP_LOGIN_STEPS, client_pair, connecting_peer, expect, run, started

if TYPE_CHECKING:
    from mailgate._io import LoginPlan

LOGIN = IMAP_LOGIN_STEPS


class Setup:
    """A client connection (a Peer and the test's end), an auth connection under way to the test's auth
    listener, and a backend listener the auth reply may name."""

    def __init__(self) -> None:
        self.client, self.client_peer = client_pair()
        self.auth_listener, self.auth_peer = connecting_peer()
        self.backend_listener = socket.create_server(("127.0.0.1", 0))
        self.backend_listener.setblocking(False)
        self.backend_port = int(self.backend_listener.getsockname()[1])
        self.started: list[str] = []  # the upstream on_start was called with

    def plan(self, *, backend_timeout: float = 10.0, to_backend: bytes = b"") -> LoginPlan:
        final, replacement = b"a OK", None
        return (
            self.client_peer,
            backend_timeout,
            30.0,
            LOGIN,
            4096,
            final,
            replacement,
            to_backend,
            self.started.append,
        )

    def reply(self) -> bytes:
        return (
            b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
            b"Auth-Port: %d\r\n\r\n" % self.backend_port
        )

    async def auth(self) -> socket.socket:
        auth, _ = await asyncio.get_running_loop().sock_accept(self.auth_listener)
        return auth

    async def backend(self) -> socket.socket:
        backend, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(self.backend_listener), 5)
        return backend

    def close(self) -> None:
        for sock in (self.client, self.auth_listener, self.backend_listener):
            sock.close()
        self.client_peer.close()
        self.auth_peer.close()


async def _log_in(setup: Setup, backend: socket.socket, last_reply: bytes) -> None:
    loop = asyncio.get_running_loop()
    for reply, answer in zip(
        (b"* OK hi\r\n", b"+ \r\n", b"+ \r\n"), (step[1] for step in LOGIN), strict=True
    ):
        await loop.sock_sendall(backend, reply)
        await expect(backend, answer)
    await loop.sock_sendall(backend, last_reply)


def test_the_usual_success_closes_the_auth_connection_logs_in_and_relays_without_resolving() -> None:
    async def main() -> None:
        setup = Setup()
        loop = asyncio.get_running_loop()
        setup.auth_peer.write(b"GET /auth HTTP/1.0\r\n\r\n")
        done = await started(setup.auth_peer.read_auth_then_login(setup.plan(to_backend=b"b NOOP\r\n")))
        auth = await setup.auth()
        await expect(auth, b"GET /auth HTTP/1.0\r\n\r\n")
        await loop.sock_sendall(auth, setup.reply())
        assert await asyncio.wait_for(loop.sock_recv(auth, 100), 5) == b""  # closed once it had the reply
        backend = await setup.backend()
        login_started = setup.auth_peer.login_started
        assert login_started is not None
        backend_peer, relay, upstream = login_started
        assert upstream == f"127.0.0.1:{setup.backend_port}"
        await _log_in(setup, backend, b"a OK in\r\n")
        await expect(setup.client, b"a OK in\r\n")
        assert setup.started == [upstream]
        assert setup.client_peer.relay is relay
        await expect(backend, b"b NOOP\r\n")
        assert not done.done()
        await loop.sock_sendall(backend, b"* BYE\r\n")
        await expect(setup.client, b"* BYE\r\n")
        backend.close()
        assert await asyncio.wait_for(done, 5) == ("backend closed", 8, 16, None)
        assert backend_peer.exchanged == 3
        setup.close()

    run(main())


OK_TO = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 1\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: 1\r\n\r\n",
        OK_TO + b"Auth-Status: nope\r\n\r\n",  # a later error is not undone, nor the other way round
        OK_TO + b"Auth-User: x\r\n\r\n",
        OK_TO + b"Auth-Pass: y\r\n\r\n",
        OK_TO + b"Auth-Error-Code: 535\r\n\r\n",
        OK_TO.replace(b"127.0.0.1", b"::1") + b"\r\n",
        OK_TO.replace(b"127.0.0.1", b"localhost") + b"\r\n",
        OK_TO.replace(b"127.0.0.1", b"127.0.0.256") + b"\r\n",
        OK_TO.replace(b"127.0.0.1", b"127.0.0.1.2") + b"\r\n",
        OK_TO.replace(b"Port: 1", b"Port: 0") + b"\r\n",
        OK_TO.replace(b"Port: 1", b"Port: 65536") + b"\r\n",
        OK_TO.replace(b"Port: 1", b"Port: 14x") + b"\r\n",
        OK_TO.replace(b"Auth-Port: 1\r\n", b"") + b"\r\n",
        OK_TO.replace(b"Auth-Status: OK\r\n", b"") + b"\r\n",
        OK_TO.replace(b"\r\n", b"\n") + b"\n",
        OK_TO + b"\n",  # a block ended by a bare LF: complete for the reader, not to be waited on
        OK_TO.replace(b"HTTP/1.0 200 OK\r\n", b"") + b"\r\n",
        b"HTTP/1.0 200 OK\r\nAuth Status: OK\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nX-Padding: " + b"x" * 1024 + b"\r\n\r\n",
    ],
)
def test_any_other_reply_is_the_reader_s_as_it_came_and_no_backend_is_called(reply: bytes) -> None:
    async def main() -> None:
        setup = Setup()
        loop = asyncio.get_running_loop()
        done = await started(setup.auth_peer.read_auth_then_login(setup.plan()))
        auth = await setup.auth()
        await loop.sock_sendall(auth, reply)
        received = await asyncio.wait_for(done, 5)
        assert isinstance(received, bytes)
        while len(received) < min(len(reply), 1024):  # a reply the reader must see more of
            received += await asyncio.wait_for(setup.auth_peer.read(), 5)
        assert reply.startswith(received)
        assert setup.auth_peer.login_started is None
        with pytest.raises(BlockingIOError):
            setup.backend_listener.accept()
        assert setup.started == []
        auth.close()
        setup.close()

    run(main())


def test_a_reply_in_pieces_with_other_headers_and_any_case_is_taken_once_complete() -> None:
    async def main() -> None:
        setup = Setup()
        loop = asyncio.get_running_loop()
        done = await started(setup.auth_peer.read_auth_then_login(setup.plan()))
        auth = await setup.auth()
        reply = (
            b"HTTP/1.1 200 OK\r\nDate: Tue, 08 Dec 2026 00:00:00 GMT\r\nauth-status:OK  \r\n"
            b"AUTH-SERVER:   127.000.0.1\r\nContent-Length: 0\r\nAuth-port: %05d\r\n\r\n" % setup.backend_port
        )
        for offset in range(0, len(reply), 7):
            assert setup.auth_peer.login_started is None
            await loop.sock_sendall(auth, reply[offset : offset + 7])
            await asyncio.sleep(0.01)
        backend = await setup.backend()
        login_started = setup.auth_peer.login_started
        assert login_started is not None
        assert login_started[2] == f"127.000.0.1:{setup.backend_port:05d}"  # as the reply wrote it
        await _log_in(setup, backend, b"a NO [AUTHENTICATIONFAILED] no\r\n")
        assert await asyncio.wait_for(done, 5) == b"a NO [AUTHENTICATIONFAILED] no\r\n"  # the session's
        assert setup.client_peer.relay is None
        assert setup.started == []
        backend.close()
        auth.close()
        setup.close()

    run(main())


def test_a_backend_that_refuses_ends_the_read_with_nothing_and_says_where() -> None:
    async def main() -> None:
        setup = Setup()
        loop = asyncio.get_running_loop()
        reply = setup.reply()
        setup.backend_listener.close()  # nothing listens on its port any more
        done = await started(setup.auth_peer.read_auth_then_login(setup.plan()))
        auth = await setup.auth()
        await loop.sock_sendall(auth, reply)
        assert await asyncio.wait_for(done, 5) == b""
        login_started = setup.auth_peer.login_started
        assert login_started is not None
        assert login_started[0].failed_in == "connect"
        auth.close()
        setup.close()

    run(main())


def test_the_login_timeout_runs_from_the_auth_reply_and_ends_the_read() -> None:
    async def main() -> None:
        setup = Setup()
        loop = asyncio.get_running_loop()
        done = await started(setup.auth_peer.read_auth_then_login(setup.plan(backend_timeout=0.3)))
        auth = await setup.auth()
        await loop.sock_sendall(auth, setup.reply())
        backend = await setup.backend()  # which never greets
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(done, 5)
        assert setup.auth_peer.login_started is not None
        backend.close()
        auth.close()
        setup.close()

    run(main())
