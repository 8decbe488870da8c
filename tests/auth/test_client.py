"""The auth_http client against a tiny asyncio auth server on loopback (spec §3.4)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from mailgate.auth.client import authenticate, query_auth_http
from mailgate.auth.request import AuthAttempt, build_auth_request
from mailgate.auth.response import Backend, InternalError, Reject
from mailgate.config.model import LogLevel, Protocol, ServerConfig
from mailgate.protocol.credentials import AuthMethod, Credentials
from tests.auth.servers import auth_url, server_config, unix_auth_url

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CREDENTIALS = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"user", b"secret", imap_tag=b"a1")
ATTEMPT = AuthAttempt(CREDENTIALS, 1, "192.0.2.42")
OK = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.5\r\nAuth-Port: 143\r\n\r\n"


class AuthStub:
    """A loopback auth server answering each request with the next of `replies` (bytes or a handler)."""

    def __init__(self, *replies: bytes | Handler) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if isinstance(reply, bytes):
                writer.write(reply)
                await writer.drain()
            else:
                await reply(reader, writer)
        finally:
            writer.close()

    async def serve(self) -> tuple[asyncio.Server, ServerConfig]:
        tcp = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        return tcp, server_config(url=auth_url(port=port), timeout=2.0)


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def close_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n")
    await writer.drain()


async def query(stub: AuthStub, attempt: AuthAttempt = ATTEMPT, timeout: float | None = None) -> object:
    tcp, server = await stub.serve()
    if timeout is not None:
        server = server_config(url=server.auth_http.url, timeout=timeout)
    async with tcp:
        return await query_auth_http(server, attempt)


def test_sends_the_built_request_and_returns_the_backend() -> None:
    stub = AuthStub(OK)
    decision = asyncio.run(query(stub))
    assert decision == Backend("10.0.0.5", socket.AF_INET, 143, b"user", b"secret", "10.0.0.5:143")
    expected = build_auth_request(server_config(url=auth_url(port=1)), ATTEMPT)
    assert stub.requests == [expected]


def test_query_runs_on_uvloop_as_the_workers_do() -> None:
    stub = AuthStub(OK)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        decision = runner.run(query(stub))
    assert decision == Backend("10.0.0.5", socket.AF_INET, 143, b"user", b"secret", "10.0.0.5:143")
    assert len(stub.requests) == 1


def test_reply_split_over_many_writes_is_reassembled() -> None:
    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in OK:
            writer.write(bytes((byte,)))
            await writer.drain()

    assert isinstance(asyncio.run(query(AuthStub(dribble))), Backend)


def test_silent_auth_server_times_out_with_nginx_message() -> None:
    decision = asyncio.run(query(AuthStub(hang), timeout=0.2))
    assert isinstance(decision, InternalError)
    assert decision.level is LogLevel.ERROR
    assert decision.message.startswith("auth http server 127.0.0.1:")
    assert decision.message.endswith(" timed out (110: Connection timed out)")


def test_garbage_reply_is_an_invalid_header() -> None:
    decision = asyncio.run(query(AuthStub(b"<html>oops</html>\r\n\r\n")))
    assert isinstance(decision, InternalError)
    assert decision.message.endswith("sent invalid header in response")
    assert decision.level is LogLevel.ERROR


def test_oversized_header_block_is_an_internal_error() -> None:
    decision = asyncio.run(query(AuthStub(b"HTTP/1.0 200 OK\r\nX-Pad: " + b"x" * 4000 + b"\r\n\r\n")))
    assert isinstance(decision, InternalError)
    assert decision.message.endswith("sent too long response header")


def test_connection_closed_before_the_empty_line_is_an_internal_error() -> None:
    decision = asyncio.run(query(AuthStub(close_early)))
    assert isinstance(decision, InternalError)
    assert "closed the connection before the end of the response header" in decision.message


def test_refused_connection_is_logged_like_nginx() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_config(url=auth_url(port=port))
    decision = asyncio.run(query_auth_http(server, ATTEMPT))
    assert decision == InternalError("recv() failed (111: Connection refused)")


def test_unix_socket_auth_server(tmp_path: Path) -> None:
    stub = AuthStub(OK)
    path = str(tmp_path / "auth.sock")

    async def run() -> object:
        unix = await asyncio.start_unix_server(stub.handle, path)
        async with unix:
            return await query_auth_http(server_config(url=unix_auth_url(path)), ATTEMPT)

    assert isinstance(asyncio.run(run()), Backend)
    assert stub.requests[0].startswith(b"GET / HTTP/1.0\r\nHost: localhost\r\n")


def test_request_with_unsafe_raw_value_is_never_sent() -> None:
    stub = AuthStub(OK)
    credentials = Credentials(
        Protocol.SMTP, AuthMethod.NONE, smtp_from=b"MAIL FROM:<a>\r\nX: y", smtp_to=b"RCPT"
    )

    async def run() -> object:
        tcp, server = await stub.serve()
        async with tcp:
            smtp = server_config(Protocol.SMTP, url=server.auth_http.url)
            return await query_auth_http(smtp, AuthAttempt(credentials, 1, "192.0.2.42"))

    decision = asyncio.run(run())
    assert isinstance(decision, InternalError)
    assert "Auth-SMTP-From" in decision.message
    assert stub.requests == []


def run_authenticate(
    stub: AuthStub, max_wait_retries: int = 10, core_timeout: float = 60.0
) -> tuple[object, list[float]]:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def run() -> object:
        tcp, server = await stub.serve()
        server = server_config(url=server.auth_http.url, core_timeout=core_timeout)
        async with tcp:
            return await authenticate(server, ATTEMPT, max_wait_retries=max_wait_retries, sleep=fake_sleep)

    return asyncio.run(run()), slept


def test_wait_reply_is_followed_by_a_new_identical_request() -> None:
    stub = AuthStub(b"Auth-Status: WAIT\r\nAuth-Wait: 2\r\n\r\n", b"Auth-Status: WAIT\r\n\r\n", OK)
    decision, slept = run_authenticate(stub)
    assert isinstance(decision, Backend)
    assert slept == [2]
    assert len(stub.requests) == 3
    assert stub.requests[0] == stub.requests[1] == stub.requests[2]


def test_ok_after_a_wait_is_a_success_not_another_query() -> None:
    stub = AuthStub(
        b"Auth-Status: WAIT\r\nAuth-Wait: 0\r\n\r\n", OK, b"Auth-Status: should not be asked\r\n\r\n"
    )
    decision, _ = run_authenticate(stub)
    assert isinstance(decision, Backend)
    assert len(stub.requests) == 2


def test_endless_wait_is_cut_after_the_retry_cap() -> None:
    stub = AuthStub(b"Auth-Status: WAIT\r\nAuth-Wait: 1\r\n\r\n")
    decision, slept = run_authenticate(stub, max_wait_retries=3)
    assert isinstance(decision, InternalError)
    assert "WAIT 4 times" in decision.message
    assert len(stub.requests) == 4
    assert slept == [1, 1, 1]


def test_wait_past_the_session_timeout_is_not_honoured() -> None:
    stub = AuthStub(b"Auth-Status: WAIT\r\nAuth-Wait: 3600\r\n\r\n")
    decision, slept = run_authenticate(stub, core_timeout=60)
    assert isinstance(decision, InternalError)
    assert "past the 60s timeout" in decision.message
    assert slept == []


def test_rejection_is_returned_to_the_session_with_its_wait() -> None:
    stub = AuthStub(b"Auth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n")
    decision, slept = run_authenticate(stub)
    assert decision == Reject(b"Invalid login or password", 3)
    assert slept == []
