"""TLS terminated in `Peer` (start_tls on the connection's socket), on loopback and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import time

from mailgate.proxy.relay import Peer, Relay
from mailgate.tls.libssl import ssl_ctx_of
from tests.server.peers import PeerHandler, PeerServer, connect_peer, run, wait_for


async def serve(handler: PeerHandler) -> tuple[PeerServer, int, list[asyncio.Task[None]]]:
    """A server whose connections are Peers handed to `handler` in a task each."""
    server = PeerServer(handler)
    return server, server.port, server.tasks


def test_every_byte_crosses_a_tls_client_relay_in_order_both_ways(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts
    size = 4 * 1024 * 1024

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.readexactly(size)
        payload = os.urandom(size)
        writer.write(hashlib.sha256(received).digest() + payload + hashlib.sha256(payload).digest())
        await writer.drain()
        writer.close()

    async def main() -> None:
        backend_server = await asyncio.start_server(backend, "127.0.0.1", 0)
        backend_port = backend_server.sockets[0].getsockname()[1]
        outcomes = []

        async def proxy(client: Peer) -> None:
            assert await client.start_tls(ssl_ctx_of(server_context), 10, 3)
            upstream = await connect_peer(backend_port)
            outcomes.append(await Relay(client, upstream, 30).run(b"", b""))

        server, port, _ = await serve(proxy)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        data = os.urandom(size)
        for offset in range(0, size, 65521):
            writer.write(data[offset : offset + 65521])
        await writer.drain()
        reply = await reader.readexactly(32 + size + 32)
        assert reply[:32] == hashlib.sha256(data).digest()
        assert hashlib.sha256(reply[32:-32]).digest() == reply[-32:]
        writer.close()
        await wait_for(lambda: len(outcomes) == 1)
        assert outcomes[0].client_to_backend == size
        assert outcomes[0].backend_to_client == size + 64
        server.close()
        backend_server.close()

    run(main())


def test_a_clienthello_that_arrived_before_start_tls_is_the_first_tls_input(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts

    async def greet(peer: Peer) -> None:
        await asyncio.sleep(0.2)  # the ClientHello waits in the socket by now
        assert await peer.start_tls(ssl_ctx_of(server_context), 10, 3)
        peer.write(b"* OK ready\r\n")
        assert await peer.read() == b"a LOGOUT\r\n"
        peer.close()

    async def main() -> None:
        server, port, tasks = await serve(greet)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        assert await reader.readline() == b"* OK ready\r\n"
        writer.write(b"a LOGOUT\r\n")
        assert await reader.read() == b""
        writer.close()
        await asyncio.gather(*tasks)
        server.close()

    run(main())


def test_a_client_close_notify_ends_its_input(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = contexts
    ends: list[bytes] = []

    async def read_to_end(peer: Peer) -> None:
        assert await peer.start_tls(ssl_ctx_of(server_context), 10, 3)
        ends.append(await peer.read())
        ends.append(await peer.read())
        await wait_for(lambda: peer.is_closed)

    async def main() -> None:
        def client(port: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost")
                tls.sendall(b"a NOOP\r\n")
                time.sleep(0.1)
                try:
                    tls.unwrap()  # our close_notify: as nginx, the server closes without answering it
                except ssl.SSLEOFError:
                    return b"closed without close_notify"
                return b"answered"

        server, port, tasks = await serve(read_to_end)
        assert await asyncio.to_thread(client, port) == b"closed without close_notify"
        await asyncio.gather(*tasks)
        assert ends == [b"a NOOP\r\n", b""]
        server.close()

    run(main())


def test_close_sends_close_notify_and_waits_for_the_clients_only_so_long(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts
    closed_after: list[float] = []

    async def close_at_once(peer: Peer) -> None:
        assert await peer.start_tls(ssl_ctx_of(server_context), 10, 0.3)
        started = time.monotonic()
        peer.close()
        await wait_for(lambda: peer.is_closed)
        closed_after.append(time.monotonic() - started)

    async def main() -> None:
        def client(port: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost")
                received = tls.recv(100)  # the server's close_notify; we never answer it
                time.sleep(1)
                return received

        server, port, tasks = await serve(close_at_once)
        assert await asyncio.to_thread(client, port) == b""
        await asyncio.gather(*tasks)
        assert 0.25 < closed_after[0] < 3
        server.close()

    run(main())


def test_a_handshake_that_never_starts_times_out_and_is_aborted() -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    failures: list[BaseException] = []

    async def handshake(peer: Peer) -> None:
        try:
            await peer.start_tls(ssl_ctx_of(server_context), 0.2, 3)
        except TimeoutError as error:
            failures.append(error)

    async def main() -> None:
        def client(port: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                return raw.recv(100)

        server, port, tasks = await serve(handshake)
        assert await asyncio.to_thread(client, port) == b""
        await asyncio.gather(*tasks)
        assert len(failures) == 1
        server.close()

    run(main())


def test_an_eof_in_the_handshake_is_a_reset_and_garbage_an_ssl_error(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, _ = contexts
    failures: list[BaseException] = []

    async def handshake(peer: Peer) -> None:
        try:
            await peer.start_tls(ssl_ctx_of(server_context), 5, 3)
        except OSError as error:
            failures.append(error)

    async def main() -> None:
        server, port, tasks = await serve(handshake)
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.shutdown(socket.SHUT_WR)
            await wait_for(lambda: len(tasks) == 1)
            await tasks[0]
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"a LOGIN user password\r\n")
            await wait_for(lambda: len(tasks) == 2)
            await tasks[1]
        assert type(failures[0]) is ConnectionResetError
        assert isinstance(failures[1], ssl.SSLError)
        server.close()

    run(main())


def test_then_input_holds_the_handshake_until_the_first_command_and_leaves_it_to_read(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """After STARTTLS the client speaks first: the session wakes once, for the handshake and its command."""
    server_context, client_context = contexts
    seen: list[object] = []

    async def handshake(peer: Peer) -> None:
        done = peer.start_tls(ssl_ctx_of(server_context), 10, 3, then_input=True)
        await asyncio.sleep(0.3)  # the client finished its handshake meanwhile and waits before writing
        seen.append(done.done())
        seen.append(await done)
        read = peer.read()
        seen.append(read.done())  # nothing left to wait for
        seen.append(await read)
        peer.close()

    async def main() -> None:
        def client(port: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost")
                time.sleep(0.6)
                tls.sendall(b"a LOGIN alice secret\r\n")
                return tls.recv(100)

        server, port, tasks = await serve(handshake)
        await asyncio.to_thread(client, port)
        await asyncio.gather(*tasks)
        assert seen == [False, True, True, b"a LOGIN alice secret\r\n"]
        server.close()

    run(main())


def test_then_input_ends_with_a_client_that_leaves_or_stays_silent_and_read_tells_which(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts
    outcomes: list[object] = []

    async def handshake(peer: Peer) -> None:
        peer.set_deadline(asyncio.get_running_loop().time() + 1.0)  # the session's wait for a command
        outcomes.append(await peer.start_tls(ssl_ctx_of(server_context), 10, 3, then_input=True))
        try:
            outcomes.append(await peer.read())
        except TimeoutError:
            outcomes.append("timed out")
        peer.close()

    async def main() -> None:
        def leaves(port: int) -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost")
                with contextlib.suppress(ssl.SSLError, OSError):
                    tls.unwrap()

        def stays_silent(port: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost")
                with contextlib.suppress(ssl.SSLError, OSError):
                    return tls.recv(100)
                return b""

        server, port, tasks = await serve(handshake)
        await asyncio.to_thread(leaves, port)
        await wait_for(lambda: len(outcomes) == 2)
        started = time.monotonic()
        await asyncio.to_thread(stays_silent, port)
        await asyncio.gather(*tasks)
        assert outcomes == [True, b"", True, "timed out"]
        assert time.monotonic() - started >= 0.9  # not before the deadline
        server.close()

    run(main())


def test_then_input_still_raises_a_failed_handshake(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, _ = contexts
    failures: list[BaseException] = []

    async def handshake(peer: Peer) -> None:
        try:
            await peer.start_tls(ssl_ctx_of(server_context), 5, 3, then_input=True)
        except OSError as error:
            failures.append(error)

    async def main() -> None:
        server, port, tasks = await serve(handshake)
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"a LOGIN user password\r\n")
            await wait_for(lambda: len(tasks) == 1)
            await tasks[0]
        assert len(failures) == 1 and isinstance(failures[0], ssl.SSLError)
        server.close()

    run(main())
