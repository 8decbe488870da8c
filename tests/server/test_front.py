"""The front of a session in C (`Peer.start_front`): TLS handshake, greeting and the first command's wait,
handed to the session once, or ended here when there is nothing for a session to do."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

from mailgate.proxy.relay import Peer
from mailgate.tls import TlsError
from mailgate.tls.libssl import ssl_ctx_of
from tests.server.peers import PeerServer, run, wait_for

GREETING = b"* OK IMAP4 ready\r\n"


class Fronts:
    """A server that runs a front on every connection and records how each ended."""

    def __init__(self, ssl_ctx: int, greeting: bytes | None, wait: float = 10.0) -> None:
        self.ended: list[tuple[str, Any, bytes]] = []
        self.peers: list[Peer] = []

        async def accept(peer: Peer) -> None:
            self.peers.append(peer)
            peer.start_front(ssl_ctx, 5.0, 0.5, greeting, wait, self._done, "context")

        self.server = PeerServer(accept)
        self.port = self.server.port

    def _done(self, context: Any, peer: Peer, stage: str, error: Any) -> None:
        assert context == "context"
        self.ended.append((stage, error, peer.take_buffered()))
        if stage != "closed":
            peer.write(b"* session\r\n")
            peer.close()

    async def wait_ended(self, count: int = 1) -> None:
        await wait_for(lambda: len(self.ended) >= count)


def test_a_tls_front_greets_and_hands_the_first_command_to_the_session(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts

    async def main() -> None:
        fronts = Fronts(ssl_ctx_of(server_context), GREETING)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", fronts.port, ssl=client_context, server_hostname="localhost"
        )
        assert await reader.readline() == GREETING
        writer.write(b"a1 LOGIN user password\r\n")
        await fronts.wait_ended()
        assert fronts.ended == [("greeted", None, b"a1 LOGIN user password\r\n")]
        assert await reader.readline() == b"* session\r\n"  # the session writes on the same TLS
        writer.close()
        fronts.server.close()

    run(main())


def test_a_front_ends_a_client_that_closes_before_its_first_command_by_itself(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts

    async def main() -> None:
        fronts = Fronts(ssl_ctx_of(server_context), GREETING)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", fronts.port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost")
                greeting = tls.recv(100)
                try:
                    tls.unwrap()  # close_notify, as a handshake-only client sends
                except ssl.SSLEOFError:  # as nginx, the server closes without answering it
                    return greeting
                return b"answered"

        assert await asyncio.to_thread(client) == GREETING
        await fronts.wait_ended()
        assert fronts.ended == [("closed", None, b"")]
        await wait_for(lambda: fronts.peers[0].is_closed)
        fronts.server.close()

    run(main())


def test_a_front_closes_a_client_that_sends_nothing_after_the_greeting_once_it_waited(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts

    async def main() -> None:
        fronts = Fronts(ssl_ctx_of(server_context), GREETING, wait=0.3)

        def client() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", fronts.port), timeout=5) as raw:
                tls = client_context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
                greeting = tls.recv(100)
                started = time.monotonic()
                try:
                    tls.recv(100)
                except (
                    ssl.SSLEOFError
                ):  # closed without close_notify, as nginx closes a client that timed out
                    return greeting, time.monotonic() - started
                return b"no EOF", 0.0

        greeting, waited = await asyncio.to_thread(client)
        assert greeting == GREETING
        assert 0.2 < waited < 5
        assert fronts.ended == [("closed", None, b"")]
        fronts.server.close()

    run(main())


def test_a_failed_handshake_goes_to_the_session_to_be_logged_and_an_eof_in_it_does_not(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, _ = contexts

    async def main() -> None:
        fronts = Fronts(ssl_ctx_of(server_context), GREETING)
        with socket.create_connection(("127.0.0.1", fronts.port)) as raw:
            raw.sendall(b"a LOGIN user password\r\n")  # plaintext on a TLS port
            await fronts.wait_ended()
        with socket.create_connection(("127.0.0.1", fronts.port)) as raw:
            raw.shutdown(socket.SHUT_WR)
            await fronts.wait_ended(2)
        (failed, error, _), closed = fronts.ended
        assert failed == "failed"
        assert isinstance(error, TlsError)
        assert "SSL_do_handshake() failed" in error.line.message
        assert closed == ("closed", None, b"")
        fronts.server.close()

    run(main())


def test_a_plain_front_greets_and_hands_over_and_without_a_greeting_hands_over_at_once() -> None:
    async def main() -> None:
        greeted = Fronts(0, b"+OK POP3 ready\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", greeted.port)
        assert await reader.readline() == b"+OK POP3 ready\r\n"
        writer.write(b"CAPA\r\n")
        await greeted.wait_ended()
        assert greeted.ended == [("greeted", None, b"CAPA\r\n")]
        writer.close()
        greeted.server.close()

    run(main())


def test_a_tls_front_without_a_greeting_hands_over_once_the_handshake_is_done(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts

    async def main() -> None:
        fronts = Fronts(ssl_ctx_of(server_context), None)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", fronts.port, ssl=client_context, server_hostname="localhost"
        )
        assert await reader.readline() == b"* session\r\n"
        assert fronts.ended == [("handshaken", None, b"")]
        writer.close()
        fronts.server.close()

    run(main())
