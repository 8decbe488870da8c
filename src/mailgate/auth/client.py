"""The auth_http client: one HTTP/1.0 request per connection, as nginx makes it.

`query_auth_http` asks once. `authenticate` asks, and follows `Auth-Status: WAIT` replies by asking again;
this is what a session calls. Neither raises for network trouble or bad replies: every failure is an
`InternalError` carrying nginx's log text.

Given a `LoginPlan`, the usual success (see `Peer.read_auth_then_login`) is taken by the connection itself,
which goes on to the backend login and the relay without waking the caller: the answer is then
`LoginStarted`, once that login needs the session or the relay has ended.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from mailgate import _io
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
from mailgate.config.model import AuthHttpUrl, ServerConfig
from mailgate.proxy.relay import Peer, Reactor, RelayOutcome, reactor_of
from mailgate.proxy.relay import Relay as ConnectionRelay

if TYPE_CHECKING:
    from mailgate._io import LoginPlan

# nginx keeps re-asking on WAIT for as long as the auth server says so; we stop after this many re-queries.
MAX_WAIT_RETRIES = 10
_TIMED_OUT = f"{errno.ETIMEDOUT}: {os.strerror(errno.ETIMEDOUT)}"


@dataclass(frozen=True, slots=True)
class LoginStarted:
    """The connection took the auth server's success and logged in to `backend` (`upstream` as the reply
    named it) with the plan's login. `result`: how the relay ended; or the backend's reply the session is to
    judge (its login engine is `backend.exchanged` replies on); or None: the login's `timeout` passed."""

    backend: Peer
    relay: ConnectionRelay
    upstream: str
    result: RelayOutcome | bytes | None


@overload
async def query_auth_http(
    server: ServerConfig, attempt: AuthAttempt, *, reactor: Reactor | None = None, login_plan: None = None
) -> AuthDecision: ...


@overload
async def query_auth_http(
    server: ServerConfig, attempt: AuthAttempt, *, reactor: Reactor | None = None, login_plan: LoginPlan
) -> AuthDecision | LoginStarted: ...


async def query_auth_http(
    server: ServerConfig,
    attempt: AuthAttempt,
    *,
    reactor: Reactor | None = None,
    login_plan: LoginPlan | None = None,
) -> AuthDecision | LoginStarted:
    """Send one auth request and read the decision; the whole exchange is bounded by `auth_http_timeout`.
    The connection is on `reactor` (by default the running loop's)."""
    settings = server.auth_http
    try:
        request = build_auth_request(server, attempt)
    except AuthRequestRefusedError as refused:
        return InternalError(str(refused))
    reader = AuthResponseReader(settings.url.text, server.protocol, attempt.credentials)
    if reactor is None:
        reactor = reactor_of(asyncio.get_running_loop())
    try:
        # time.monotonic() is the event loop's clock, without get_running_loop()'s getpid() call
        deadline = time.monotonic() + settings.timeout
        return await _exchange(server, request, reader, reactor, deadline, login_plan=login_plan)
    except TimeoutError:
        return InternalError(f"auth http server {settings.url.text} timed out ({_TIMED_OUT})")


async def authenticate(
    server: ServerConfig,
    attempt: AuthAttempt,
    *,
    max_wait_retries: int = MAX_WAIT_RETRIES,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    reactor: Reactor | None = None,
    login_plan: LoginPlan | None = None,
) -> Backend | Reject | InternalError | LoginStarted:
    """Ask the auth server, following WAIT replies: sleep `Auth-Wait` seconds, then ask again (same attempt).

    Unlike nginx, each reply's WAIT stands alone (an `OK` after a WAIT is a success), and the client is
    not held forever: after `max_wait_retries` re-queries, or once the WAIT sleeps would pass the server's
    pre-auth `timeout`, the attempt ends in an InternalError.
    """
    slept = 0.0
    retries = 0
    while True:
        decision = await query_auth_http(server, attempt, reactor=reactor, login_plan=login_plan)
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


async def _exchange(
    server: ServerConfig,
    request: bytes,
    reader: AuthResponseReader,
    reactor: Reactor,
    deadline: float,
    *,
    login_plan: LoginPlan | None,
) -> AuthDecision | LoginStarted:
    """One auth connection: the request (sent once connected), then the reply fed to the reader until it
    decides or the connection ends. TimeoutError past `deadline`."""
    url = server.auth_http.url
    try:
        peer = Peer.connect(reactor, url.family, url.host, url.port)
    except OSError as error:
        return _connect_failed(url, error)
    try:
        peer.set_deadline(deadline)
        # Written and read while the connect is under way: the connection sends the request once connected,
        # without waking this coroutine in between; where it failed says which error nginx would log.
        peer.write(request)
        read = peer.read() if login_plan is None else peer.read_auth_then_login(login_plan)
        while True:
            data = await read
            started = peer.login_started
            if started is not None:
                return _login_started(started, data)
            assert isinstance(data, bytes)
            if not data:
                failure = peer.receive_error
                if peer.failed_in == "connect":
                    assert failure is not None
                    return _connect_failed(url, failure)
                if peer.failed_in == "send":
                    return InternalError(f"send() failed ({_describe(failure or ConnectionResetError())})")
                if failure is not None:
                    return InternalError(f"recv() failed ({_describe(failure)})")
                return reader.feed_eof()
            decision = reader.feed(data)
            if not isinstance(decision, NeedMore):
                return decision
            read = peer.read()
    except TimeoutError:
        started = peer.login_started
        if started is None:
            raise
        return _login_started(started, None)  # the backend login's deadline, not the auth server's
    except BaseException:
        started = peer.login_started
        if started is not None:
            started[0].abort()  # which ends the relay, if it runs
        raise
    finally:
        peer.close()


def _login_started(
    started: tuple[Peer, _io.Relay, str], result: bytes | tuple[str, int, int, OSError | None] | None
) -> LoginStarted:
    backend, relay, upstream = started
    outcome = RelayOutcome(*result) if isinstance(result, tuple) else result
    return LoginStarted(backend, ConnectionRelay.of(relay), upstream, outcome)


def _connect_failed(url: AuthHttpUrl, error: OSError) -> InternalError:
    if error.errno == errno.ECONNREFUSED:
        # nginx connects without blocking and learns of the refusal from its first recv().
        return InternalError(f"recv() failed ({_describe(error)})")
    return InternalError(f"connect() to {url.text} failed ({_describe(error)})")


def _describe(error: OSError) -> str:
    number = error.errno or 0
    return f"{number}: {os.strerror(number) if number else error}"
