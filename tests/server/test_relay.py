"""The byte relay between a client and a backend, on real loopback sockets and uvloop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable

from mailgate.proxy.relay import HALF_CLOSE_QUIET, Peer, Relay, RelayOutcome
from tests.server.peers import PeerServer, connect_peer, run, wait_for

BackendHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ProxyUnderTest:
    """Accepts clients and relays each to a backend server, recording every relay's outcome."""

    def __init__(self, backend_port: int, timeout: float = 30.0) -> None:
        self.backend_port = backend_port
        self.timeout = timeout
        self.outcomes: list[RelayOutcome] = []
        self.relays: list[tuple[Peer, Peer]] = []
        self.server: PeerServer | None = None

    async def start(self) -> int:
        self.server = PeerServer(self._session)
        return self.server.port

    async def _session(self, client: Peer) -> None:
        backend = await connect_peer(self.backend_port)
        self.relays.append((client, backend))
        outcome = await Relay(client, backend, self.timeout).run(b"", b"")
        self.outcomes.append(outcome)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def start_backend(handler: BackendHandler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_every_byte_arrives_in_order_both_ways_for_many_concurrent_sessions() -> None:
    sessions = 24
    size = 512 * 1024

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The client says how much it sends; the backend answers with random data and both digests.
        header = await reader.readexactly(8)
        expected = int.from_bytes(header, "big")
        payload = os.urandom(size)

        async def send() -> None:
            for offset in range(0, size, 7919):
                writer.write(payload[offset : offset + 7919])
                await writer.drain()

        sender = asyncio.ensure_future(send())
        received = await reader.readexactly(expected)
        await sender
        writer.write(hashlib.sha256(received).digest() + hashlib.sha256(payload).digest())
        await writer.drain()
        writer.close()

    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = os.urandom(size)
        writer.write(len(data).to_bytes(8, "big"))
        for offset in range(0, size, 4093):
            writer.write(data[offset : offset + 4093])
        await writer.drain()
        reply = await reader.read()
        payload, digests = reply[:-64], reply[-64:]
        assert digests[:32] == hashlib.sha256(data).digest()
        assert digests[32:] == hashlib.sha256(payload).digest()
        assert len(payload) == size
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port)
        port = await proxy.start()
        await asyncio.gather(*(client(port) for _ in range(sessions)))
        await wait_for(lambda: len(proxy.outcomes) == sessions)
        assert {outcome.reason for outcome in proxy.outcomes} == {"backend closed"}
        assert all(outcome.client_to_backend == size + 8 for outcome in proxy.outcomes)
        assert all(outcome.backend_to_client == size + 64 for outcome in proxy.outcomes)
        await proxy.stop()
        backend_server.close()

    run(main())


def test_a_half_closed_client_still_receives_the_backends_whole_reply() -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's half-close reaches us
        await asyncio.sleep(0.05)
        writer.write(b"* BYE " + request.upper() * 1000)
        await writer.drain()
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port)
        port = await proxy.start()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"a logout\r\n")
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            received = b""
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
        assert received == b"* BYE " + b"A LOGOUT\r\n" * 1000
        await wait_for(lambda: len(proxy.outcomes) == 1)
        assert proxy.outcomes[0].reason == "backend closed"
        await proxy.stop()
        backend_server.close()

    run(main())


def test_a_half_close_reaches_the_backend_only_after_its_replies_to_pipelined_commands() -> None:
    # Like Dovecot, this backend drops the session the moment it reads an EOF, whatever it still has to
    # send: a half-close passed on at once would cut its reply short.
    parts = [os.urandom(64 * 1024) for _ in range(12)]

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"a2 logout\r\n")
        eof = asyncio.ensure_future(reader.read(1))
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(HALF_CLOSE_QUIET / 10)
            if eof.done():
                writer.transport.abort()
                return
        writer.write(b"a2 OK bye\r\n")
        await writer.drain()
        assert await eof == b""  # and then the half-close came
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port)
        port = await proxy.start()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"a1 fetch\r\na2 logout\r\n")
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            received = b""
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
        assert received == b"".join(parts) + b"a2 OK bye\r\n"
        await wait_for(lambda: len(proxy.outcomes) == 1)
        assert proxy.outcomes[0].reason == "backend closed"
        await proxy.stop()
        backend_server.close()

    run(main())


def test_a_half_closed_client_whose_backend_stays_silent_ends_before_proxy_timeout() -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.read() == b"a1 noop\r\n"  # returns at the half-close passed on
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port, timeout=3600)
        port = await proxy.start()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"a1 noop\r\n")
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            assert await asyncio.get_running_loop().sock_recv(sock, 1024) == b""
        await wait_for(lambda: len(proxy.outcomes) == 1)
        assert proxy.outcomes[0].reason == "backend closed"
        await proxy.stop()
        backend_server.close()

    run(main())


def test_a_client_that_disconnects_closes_the_backend_connection() -> None:
    async def main() -> None:
        seen = asyncio.Event()

        async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"* OK ready\r\n")
            await reader.read()
            seen.set()
            writer.close()

        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port)
        port = await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readline() == b"* OK ready\r\n"
        writer.transport.abort()
        await asyncio.wait_for(seen.wait(), 10)
        await wait_for(lambda: len(proxy.outcomes) == 1)
        assert proxy.outcomes[0].reason in {"client closed", "backend closed"}
        await proxy.stop()
        backend_server.close()

    run(main())


def test_relay_ends_after_proxy_timeout_without_transfer() -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port, timeout=0.3)
        port = await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a noop\r\n")
        assert await reader.read() == b""  # closed by the proxy, not by us
        await wait_for(lambda: len(proxy.outcomes) == 1)
        assert proxy.outcomes[0].reason == "timed out"
        await proxy.stop()
        backend_server.close()

    run(main())


def test_a_client_that_does_not_read_stops_the_proxy_reading_the_backend() -> None:
    total = 32 * 1024 * 1024
    payload = os.urandom(1024 * 1024)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(payload)):
            writer.write(payload)
            await writer.drain()
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        proxy = ProxyUnderTest(backend_port)
        port = await proxy.start()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        await wait_for(lambda: bool(proxy.relays))
        client_peer, _ = proxy.relays[0]
        # The proxy must stop reading the backend rather than buffer 32 MiB for a client that is not reading:
        # what it holds for the client stops growing.
        held = -1
        while client_peer.write_buffer_size != held:
            held = client_peer.write_buffer_size
            await asyncio.sleep(0.2)
        assert 0 < held < total // 4
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        received = 0
        while chunk := await loop.sock_recv(sock, 1 << 20):
            digest.update(chunk)
            received += len(chunk)
        sock.close()
        assert received == total
        assert digest.digest() == hashlib.sha256(payload * (total // len(payload))).digest()
        await proxy.stop()
        backend_server.close()

    run(main())


def test_bytes_the_client_sent_before_the_relay_reach_the_backend_first_and_in_order() -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(len(b"early late"))
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main() -> None:
        backend_server, backend_port = await start_backend(backend)
        accepted: asyncio.Queue[Peer] = asyncio.Queue()

        async def accept(peer: Peer) -> None:
            await accepted.put(peer)

        server = PeerServer(accept)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client = await accepted.get()
        writer.write(b"early")
        await writer.drain()
        assert await client.read() == b"early"
        writer.write(b" late")
        await writer.drain()
        await asyncio.sleep(0.05)
        backend_peer = await connect_peer(backend_port)
        relay = asyncio.ensure_future(Relay(client, backend_peer, 30).run(b"", b"early"))
        assert await reader.read() == b"early late"
        outcome = await relay
        assert outcome.reason == "backend closed"
        server.close()
        backend_server.close()

    run(main())


def test_a_peer_deadline_ends_waiting_reads_but_not_reads_that_need_no_wait() -> None:
    async def main() -> None:
        accepted: asyncio.Queue[Peer] = asyncio.Queue()

        async def accept(peer: Peer) -> None:
            await accepted.put(peer)

        server = PeerServer(accept)
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            peer = await accepted.get()
            peer.set_deadline(loop.time() + 0.1)
            started = loop.time()
            try:
                await peer.read()
            except TimeoutError:
                pass
            else:
                raise AssertionError("read() outlived its deadline")
            assert 0.05 < loop.time() - started < 5
            sock.sendall(b"a NOOP\r\n")
            await asyncio.sleep(0.1)
            # waiting in the socket already: no wait, so no timeout even past the deadline
            assert await peer.read() == b"a NOOP\r\n"
            peer.set_deadline(None)
            sock.sendall(b"b NOOP\r\n")
            assert await asyncio.wait_for(peer.read(), 5) == b"b NOOP\r\n"
            peer.close()
        server.close()

    run(main())
