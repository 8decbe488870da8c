"""The auth_http client: one HTTP/1.0 request per connection, as nginx makes it.

`query_auth_http` asks once. `authenticate` asks, and follows `Auth-Status: WAIT` replies by asking again;
this is what a session calls. Neither raises for network trouble or bad replies: every failure is an
`InternalError` carrying nginx's log text.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import cast

from mailgate.auth.request import AuthAttempt, AuthRequestRefusedError, build_auth_request
from mailgate.auth.response import (
    AuthDecision,
    AuthResponseReader,
    Backend,
    InternalError,
    NeedMore,
    Reject,
    Retry,
)
from mailgate.config.model import ServerConfig

# nginx keeps re-asking on WAIT for as long as the auth server says so; we stop after this many re-queries.
MAX_WAIT_RETRIES = 10
_TIMED_OUT = f"{errno.ETIMEDOUT}: {os.strerror(errno.ETIMEDOUT)}"


async def query_auth_http(server: ServerConfig, attempt: AuthAttempt) -> AuthDecision:
    """Send one auth request and read the decision; the whole exchange is bounded by `auth_http_timeout`."""
    settings = server.auth_http
    peer = settings.url.text
    try:
        request = build_auth_request(server, attempt)
    except AuthRequestRefusedError as refused:
        return InternalError(str(refused))
    reader = AuthResponseReader(peer, server.protocol, attempt.credentials)
    try:
        async with asyncio.timeout(settings.timeout):
            return await _exchange(server, request, reader)
    except TimeoutError:
        return InternalError(f"auth http server {peer} timed out ({_TIMED_OUT})")


async def authenticate(
    server: ServerConfig,
    attempt: AuthAttempt,
    *,
    max_wait_retries: int = MAX_WAIT_RETRIES,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Backend | Reject | InternalError:
    """Ask the auth server, following WAIT replies: sleep `Auth-Wait` seconds, then ask again (same attempt).

    Unlike nginx, each reply's WAIT stands alone (an `OK` after a WAIT is a success), and the client is
    not held forever: after `max_wait_retries` re-queries, or once the WAIT sleeps would pass the server's
    pre-auth `timeout`, the attempt ends in an InternalError.
    """
    slept = 0.0
    retries = 0
    while True:
        decision = await query_auth_http(server, attempt)
        if not isinstance(decision, Retry):
            return decision
        peer = server.auth_http.url.text
        if retries >= max_wait_retries:
            return InternalError(f"auth http server {peer} sent WAIT {retries + 1} times, giving up")
        if slept + decision.wait > server.core.timeout:
            limit = f"{server.core.timeout:g}s"
            return InternalError(f"auth http server {peer} asked to wait past the {limit} timeout")
        retries += 1
        slept += decision.wait
        if decision.wait:
            await sleep(decision.wait)


class _AuthExchange(asyncio.Protocol):
    """One auth connection: writes the request once connected, then feeds the reply to the reader until
    it decides or the connection ends; `decided` gets the decision."""

    def __init__(
        self, request: bytes, reader: AuthResponseReader, decided: asyncio.Future[AuthDecision]
    ) -> None:
        self._request = request
        self._reader = reader
        self._decided = decided
        self._write_failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio's classes: no isinstance check here.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(self._request)
        # A failed write closes the transport at once; connection_lost then says why.
        self._write_failed = writer.is_closing()

    def data_received(self, data: bytes) -> None:
        decision = self._reader.feed(data)
        if not isinstance(decision, NeedMore):
            self._decide(decision)

    def eof_received(self) -> bool:
        self._decide(self._reader.feed_eof())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._write_failed:
            error = exc if isinstance(exc, OSError) else ConnectionResetError("Connection lost")
            self._decide(InternalError(f"send() failed ({_describe(error)})"))
        elif isinstance(exc, OSError):
            self._decide(InternalError(f"recv() failed ({_describe(exc)})"))
        else:
            self._decide(self._reader.feed_eof())

    def _decide(self, decision: AuthDecision) -> None:
        if not self._decided.done():
            self._decided.set_result(decision)


async def _exchange(server: ServerConfig, request: bytes, reader: AuthResponseReader) -> AuthDecision:
    url = server.auth_http.url
    loop = asyncio.get_running_loop()
    decided: asyncio.Future[AuthDecision] = loop.create_future()
    exchange = _AuthExchange(request, reader, decided)
    try:
        if url.family == socket.AF_UNIX:
            transport, _ = await loop.create_unix_connection(lambda: exchange, url.host)
        else:
            transport, _ = await loop.create_connection(lambda: exchange, url.host, url.port)
    except OSError as error:
        if error.errno == errno.ECONNREFUSED:
            # nginx connects without blocking and learns of the refusal from its first recv().
            return InternalError(f"recv() failed ({_describe(error)})")
        return InternalError(f"connect() to {url.text} failed ({_describe(error)})")
    try:
        return await decided
    finally:
        transport.close()


def _describe(error: OSError) -> str:
    number = error.errno or 0
    return f"{number}: {os.strerror(number) if number else error}"
