"""One client session: PROXY header → TLS → greeting → pre-auth engine → auth → backend login → relay.

Each stage is a separate room that knows only the next one; this module walks a connection through them and
does the I/O the sans-I/O engines ask for. Every failure ends this one session with the protocol's line and
a log message, never anything else.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, NoReturn, TypeVar

from mailgate.auth.client import LoginStarted, authenticate
from mailgate.auth.client_host import ClientHostResolver
from mailgate.auth.request import UNAVAILABLE, AuthAttempt
from mailgate.auth.response import Backend, InternalError, Reject
from mailgate.config.model import Listen, LogLevel, Protocol, ProxyProtocolOut, ServerConfig, VerifyClient
from mailgate.log import ErrorLog, LogContext, SessionLogEntry
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.protocol.engine import PreAuthEngine
from mailgate.protocol.events import Authenticate, Close, Log, NeedData, Reply, StartTls
from mailgate.protocol.imap import ImapPreAuth
from mailgate.protocol.pop3 import Pop3PreAuth
from mailgate.protocol.smtp import SmtpPreAuth
from mailgate.proxy.address import SocketAddress
from mailgate.proxy.backend_login import (
    BackendLogin,
    Done,
    Failed,
    Send,
    UpstreamAction,
    backend_login_for,
)
from mailgate.proxy.proxy_protocol import (
    PROXY_HEADER_READ_SIZE,
    BrokenProxyHeader,
    ProxyProtocolHeader,
    apply_realip,
    build_proxy_header,
    read_proxy_header,
)
from mailgate.proxy.relay import Peer, Reactor, Relay, RelayOutcome
from mailgate.tls import (
    SHUTDOWN_TIMEOUT,
    ServerTls,
    TlsError,
    TlsFacts,
    check_client_certificate,
    handshake_failure,
    tls_facts,
)

if TYPE_CHECKING:
    from mailgate._io import LoginPlan

T = TypeVar("T")

# nginx logs its timeouts with the errno text of ETIMEDOUT.
CLIENT_TIMED_OUT = "client timed out (110: Connection timed out)"
# Errors nginx only learns at its first recv() on the upstream, as its connect() does not block.
_ASYNC_CONNECT_ERRORS = frozenset({errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ECONNRESET})

ENGINES: dict[Protocol, Callable[..., PreAuthEngine]] = {
    Protocol.IMAP: ImapPreAuth,
    Protocol.POP3: Pop3PreAuth,
    Protocol.SMTP: SmtpPreAuth,
}


@dataclass(frozen=True, slots=True)
class FrontEnd:
    """How the front of a session, run in C before the session exists (`Peer.start_front`), ended."""

    stage: str  # "greeted": greeting sent, first input buffered; "handshaken": no greeting; "failed"
    error: BaseException | None = None  # the handshake failure, for "failed"


class _SessionEndedError(Exception):
    """Unwinds a session that has already said and logged what it had to."""


@dataclass
class ServerRuntime:
    """What sessions of one `server {}` share inside a worker."""

    server: ServerConfig
    tls: ServerTls | None
    error_log: ErrorLog
    client_host_resolver: ClientHostResolver
    reactor: Reactor  # the worker's: every connection of its sessions
    loop: asyncio.AbstractEventLoop  # the worker's (asyncio.get_running_loop() costs a getpid() in 3.11)
    session_log: bool = False  # the server writes a session log (which reports TLS facts)


@dataclass(slots=True)
class SessionRecord:
    """What a session did, for the session log written when it ends."""

    connection: int
    client: str
    server: str
    protocol: Protocol
    started: float = field(default_factory=time.monotonic)
    tls_mode: str = ""  # "", "implicit", "starttls"
    tls: TlsFacts | None = None
    login: str | None = None
    auth_result: str = ""
    upstream: str | None = None
    client_to_backend: int = 0
    backend_to_client: int = 0
    close_reason: str = ""

    def log_entry(self) -> SessionLogEntry:
        """The session log's line for this session (no password is ever recorded here)."""
        tls = self.tls
        return SessionLogEntry(
            connection=self.connection,
            client=self.client,
            server=self.server,
            protocol=str(self.protocol),
            tls=self.tls_mode or "none",
            tls_protocol=tls.protocol if tls is not None else None,
            tls_cipher=tls.cipher if tls is not None else None,
            tls_resumed=tls.resumed if tls is not None else None,
            login=self.login,
            auth=self.auth_result or "none",
            upstream=self.upstream,
            bytes_from_client=self.client_to_backend,
            bytes_to_client=self.backend_to_client,
            duration=time.monotonic() - self.started,
            end=self.close_reason or "closed",
        )


class _LoginPlan(NamedTuple):
    """A backend login prepared before the auth reply, and how its connection is to run it (LoginPlan)."""

    login: BackendLogin
    connection_plan: LoginPlan


class Session:
    """Runs one accepted connection to its end. `run()` never raises (except cancellation)."""

    __slots__ = (
        "_local_address",
        "action",
        "backend",
        "client",
        "client_address",
        "connection",
        "front",
        "listen",
        "log",
        "login",
        "loop",
        "peer_address",
        "proxy_header",
        "record",
        "runtime",
        "server",
        "starttls",
        "tls",
        "upstream",
    )

    def __init__(
        self,
        runtime: ServerRuntime,
        listen: Listen,
        client: Peer,
        peer_address: object,
        connection: int,
        *,
        front: FrontEnd | None = None,
    ) -> None:
        self.runtime = runtime
        self.front = front
        self.server = runtime.server
        self.listen = listen
        self.client = client
        self.connection = connection
        self.loop = runtime.loop
        self.log = runtime.error_log
        # The listening socket's family (sock.family converts to an enum on every read).
        self.peer_address = SocketAddress.from_sockname(listen.family, peer_address)
        self._local_address: SocketAddress | None = None
        self.client_address = self.peer_address
        self.proxy_header: ProxyProtocolHeader | None = None
        self.backend: Peer | None = None
        self.tls: TlsFacts | None = None
        self.starttls = False
        self.action: str | None = None
        self.login: str | None = None
        self.upstream: str | None = None
        self.record = SessionRecord(connection, str(self.peer_address), listen.text, self.server.protocol)

    @property
    def local_address(self) -> SocketAddress:
        """Our end of the client connection (asked of the socket when first needed)."""
        if self._local_address is None:
            self._local_address = SocketAddress.from_sockname(self.listen.family, self.client.getsockname())
        return self._local_address

    # -- logging

    def _context(self) -> LogContext:
        return LogContext(
            client=self.client_address.text,
            server=self.listen.text,
            starttls=self.starttls,
            login=self.login,
            upstream=self.upstream,
        )

    def _log(self, level: LogLevel, message: str, action: str | None = None) -> None:
        if self.log.enabled(level):
            self.log.log(
                level,
                message,
                connection=self.connection,
                action=action if action is not None else self.action,
                context=self._context(),
            )

    # -- the session

    async def run(self) -> SessionRecord:
        if self.log.enabled(LogLevel.INFO):
            self.log.log(
                LogLevel.INFO,
                f"client {self.peer_address} connected to {self.listen.text}",
                connection=self.connection,
            )
        try:
            await self._run()
        except _SessionEndedError:
            pass
        except (ConnectionError, OSError, ssl.SSLError) as error:
            self._log(LogLevel.INFO, f"connection error ({error})")
            self.record.close_reason = self.record.close_reason or "connection error"
        except Exception as error:  # a bug must cost one session, never the worker
            self._log(LogLevel.ALERT, f"session failed: {error!r}")
            self.record.close_reason = "internal error"
        finally:
            self._close_all()
        if self.runtime.session_log:
            try:
                self._tls_facts()  # for the session log's TLS fields
            except Exception as error:
                self._log(LogLevel.ALERT, f"reading TLS facts failed: {error!r}")
        return self.record

    def stop(self, reason: str) -> None:
        """End the session from outside: `shutdown timeout` (logged, as nginx logs it for relays) when a
        graceful stop ran out of time, `worker exiting` (silent) for a fast stop."""
        relay = self.client.relay  # also one the auth connection started (LoginStarted)
        if relay is not None:
            relay.stop(reason)
            return
        if reason == "shutdown timeout":
            self._log(LogLevel.INFO, reason)
        self.record.close_reason = reason
        self._close_all()

    async def _run(self) -> None:
        deadline = self.loop.time() + self.server.core.timeout
        client = self.client
        if self.listen.proxy_protocol:
            self.action = "reading PROXY protocol"
            await self._read_proxy_header(client, deadline)
        front = self.front
        if self.listen.ssl:
            self.action = "SSL handshaking"
            if front is None:
                await self._handshake(client, deadline)
            elif front.error is not None:
                self._handshake_failed(front.error)
            self.record.tls_mode = "implicit"
            await self._check_client_certificate(client)
        self.action = None
        client_host = UNAVAILABLE
        if self.server.protocol is Protocol.SMTP:
            client_host = await self._smtp_client_host()
        engine = ENGINES[self.server.protocol](self.server, tls_active=self.listen.ssl)
        if self.server.protocol is Protocol.SMTP and self.server.smtp.greeting_delay > 0:
            await self._greeting_delay(client, engine)
        self.action = "sending client greeting line"
        greeting = engine.greeting()
        if front is None or front.stage != "greeted":
            client.write(greeting)
        outcome, credentials = await self._pre_auth(client, engine, client_host)
        self._relay_finished(outcome)
        del credentials

    def _logged_in_to(self, upstream: str) -> None:
        self.upstream = upstream
        self._logged_in()

    def _logged_in(self) -> None:
        self.action = None  # nginx names no action for the login and the end of the relay
        self._log(LogLevel.INFO, "client logged in")
        self.action = "proxying"

    def _relay_finished(self, outcome: RelayOutcome) -> None:
        self.record.client_to_backend = outcome.client_to_backend
        self.record.backend_to_client = outcome.backend_to_client
        self.record.close_reason = outcome.reason
        if outcome.reason == "backend closed" and self.client.at_eof:
            # The client's close was passed on to the backend, which then closed: the client ended it.
            self.record.close_reason = "client closed"
        if outcome.client_error is not None:
            self._log_receive_error(outcome.client_error, "proxying and reading from client")
        if outcome.reason == "timed out":
            self._log(LogLevel.INFO, CLIENT_TIMED_OUT)
        elif outcome.reason == "shutdown timeout":
            self._log(LogLevel.INFO, "shutdown timeout")
        elif outcome.reason != "worker exiting":
            self._log(LogLevel.INFO, "proxied session done", action="")

    # -- PROXY protocol, TLS

    async def _read_proxy_header(self, client: Peer, deadline: float) -> None:
        client.set_deadline(deadline)
        try:
            received = await client.read()
        except TimeoutError:
            self._client_timed_out()
        finally:
            client.set_deadline(None)
        if not received:
            self._end("client closed")
        # nginx peeks at most this much for the header; what follows it is the session's first input.
        result = read_proxy_header(received[:PROXY_HEADER_READ_SIZE])
        if isinstance(result, BrokenProxyHeader):
            self._log(LogLevel.ERROR, result.log_message)
            self._end("broken PROXY header")
        client.unread(received[result.consumed :])
        self.proxy_header = result.header
        self.client_address = apply_realip(result.header, self.peer_address, self.server.realip)
        self.record.client = str(self.client_address)

    async def _handshake(self, client: Peer, deadline: float, *, then_input: bool = False) -> None:
        """The server TLS handshake on the client connection (TLS is terminated in `Peer`); `then_input`:
        return only once the client's first input after it is there (or cannot come), for read()."""
        remaining = max(0.001, deadline - self.loop.time())
        try:
            done = await client.start_tls(
                self._tls().ssl_ctx, remaining, SHUTDOWN_TIMEOUT, then_input=then_input
            )
        except (ssl.SSLError, OSError) as error:
            self._handshake_failed(error)
        if not done:
            self._end("client closed")

    def _handshake_failed(self, error: BaseException) -> NoReturn:
        """Log as nginx does (nothing for a timeout) and end the session."""
        line = handshake_failure(error)
        if line is None:
            self._end("timed out")
        self._log(line.level, line.message)
        self._end("TLS handshake failed")

    def _tls(self) -> ServerTls:
        assert self.runtime.tls is not None, "a server with TLS listeners always has a context"
        return self.runtime.tls

    def _tls_facts(self) -> TlsFacts | None:
        """The client's TLS facts once its handshake succeeded (read when first needed: the auth request,
        the PROXY header, the session log), else None."""
        if self.tls is None and self.record.tls_mode:
            self.tls = tls_facts(self.client.ssl, self.server)
            self.record.tls = self.tls
        return self.tls

    async def _check_client_certificate(self, client: Peer) -> None:
        check = check_client_certificate(client.ssl, self.server)
        if check.ok:
            return
        if check.log_message:
            self._log(LogLevel.INFO, check.log_message)
        reply = check.reply(self.server.protocol)
        if reply:
            client.write(reply)
        self.record.auth_result = "client certificate refused"
        self._end("client certificate refused")

    async def _start_tls(self, client: Peer, deadline: float) -> None:
        # Nothing was read past the STARTTLS command line (reads are on demand): the ClientHello is still in
        # the socket for the TLS layer, and plaintext pipelined behind the command is never executed.
        client.discard_buffered()
        self.starttls = True
        self.action = "in starttls state"
        # The client speaks first after STARTTLS: the handshake's wait runs on to its first command (one
        # wake-up for both), unless a client certificate must be judged (and refused) before it.
        quiet_certificate = self.server.ssl.verify_client is VerifyClient.OFF
        await self._handshake(client, deadline, then_input=quiet_certificate)
        self.record.tls_mode = "starttls"
        await self._check_client_certificate(client)

    # -- SMTP before the greeting

    async def _smtp_client_host(self) -> str:
        address = self.client_address.text if self.client_address.is_ip else None
        self.action = "in resolving client address"
        host = await self.runtime.client_host_resolver.lookup(address)
        for message in host.messages:
            self._log(message.level, message.text, message.action)
        return host.name

    async def _greeting_delay(self, client: Peer, engine: PreAuthEngine) -> None:
        self.action = "in delay pipelining state"
        client.set_deadline(self.loop.time() + self.server.smtp.greeting_delay)
        try:
            early = await client.read()
        except TimeoutError:
            return
        finally:
            client.set_deadline(None)
        if not early:
            self._end("client closed")
        assert isinstance(engine, SmtpPreAuth)
        client.write(engine.rejected_before_greeting(early))
        while True:  # the engine now gives its log message, then Close
            event = engine.next_event()
            if isinstance(event, Log):
                self._log(LogLevel(event.level), event.message)
            else:
                self._end("rejected before greeting")

    # -- pre-authentication ----------------------------------------------------------------------------------

    async def _pre_auth(
        self, client: Peer, engine: PreAuthEngine, client_host: str
    ) -> tuple[RelayOutcome, Credentials]:
        """Drive the engine until a backend session is established and relayed; returns how the relay ended.

        Waiting for the client is bounded by `timeout`, from the greeting and again after each rejected
        login: one deadline on the client Peer (not a timer per wait).
        """
        attempts = 0
        self.action = "in auth state"
        deadline = self.loop.time() + self.server.core.timeout
        client.set_deadline(deadline)
        while True:
            event = engine.next_event()
            if isinstance(event, Reply):
                await self._write_reply(client, event.data)
            elif isinstance(event, NeedData):
                try:
                    data = await client.read()  # awaited here: one coroutine less held by an idle session
                except TimeoutError:
                    self._client_timed_out()
                if not data:
                    self._client_closed(client)
                engine.receive_data(data)
            elif isinstance(event, Log):
                self._log(LogLevel(event.level), event.message)
            elif isinstance(event, StartTls):
                await self._start_tls(client, deadline)
                engine.tls_established()
                self.action = "in auth state"
            elif isinstance(event, Close):
                self._end("client quit" if event.reason in ("logout", "quit") else event.reason)
            elif isinstance(event, Authenticate):
                attempts += 1
                outcome = await self._authenticate(client, engine, event.credentials, attempts, client_host)
                if outcome is not None:
                    return outcome, event.credentials
                deadline = self.loop.time() + self.server.core.timeout
                client.set_deadline(deadline)
                self.action = "in auth state"

    async def _write_reply(self, client: Peer, data: bytes) -> None:
        client.write(data)
        if not client.write_buffer_size:
            return
        # nginx reads nothing more until a reply is written (its "send handler busy").
        try:
            await client.drain()
        except TimeoutError:
            self._client_timed_out()

    def _client_closed(self, client: Peer) -> NoReturn:
        if client.receive_error is not None:
            self._log_receive_error(client.receive_error)
        self._end("client closed")

    def _client_timed_out(self) -> NoReturn:
        self._log(LogLevel.INFO, CLIENT_TIMED_OUT)
        self._end("timed out")

    def _log_receive_error(self, error: OSError, action: str | None = None) -> None:
        """A client connection that ended in an error, as nginx's recv() or SSL_read() reports it."""
        if isinstance(error, TlsError):
            self._log(error.line.level, error.line.message, action)
            return
        if isinstance(error, ssl.SSLError):  # its errno is OpenSSL's SSL_ERROR_* code, not an OS errno
            self._log(LogLevel.INFO, f"SSL_read() failed ({error})", action)
            return
        if self.record.tls_mode:
            return  # nginx's SSL_read() takes a reset with nothing queued for a clean close: no line
        number = error.errno or 0
        self._log(LogLevel.INFO, f"recv() failed ({number}: {os.strerror(number)})", action)

    # -- authentication

    async def _authenticate(
        self,
        client: Peer,
        engine: PreAuthEngine,
        credentials: Credentials,
        attempt: int,
        client_host: str,
    ) -> RelayOutcome | None:
        """One auth attempt: how the relay to the backend ended, or None to continue pre-auth."""
        self.action = "in http auth state"
        self.login = credentials.login.decode("utf-8", "backslashreplace")
        self.record.login = self.login
        request = AuthAttempt(
            credentials=credentials,
            login_attempt=attempt,
            client_address=self.client_address.text,
            smtp_client_host=client_host,
            proxy_protocol=self.proxy_header,
            tls=self._tls_facts(),
        )
        plan = self._login_plan(client, engine, credentials, client_host)
        decision = await authenticate(
            self.server,
            request,
            reactor=self.runtime.reactor,
            login_plan=None if plan is None else plan.connection_plan,
        )
        if isinstance(decision, LoginStarted):
            assert plan is not None
            return await self._login_started(client, engine, plan, decision)
        if isinstance(decision, InternalError):
            self._log(decision.level, decision.message)
            self.record.auth_result = "auth service error"
            self._internal_error(client, engine)
        if isinstance(decision, Reject):
            text = decision.text.decode("utf-8", "backslashreplace")
            self._log(LogLevel.INFO, f'client login failed: "{text}"')
            self.record.auth_result = "rejected"
            if decision.wait <= 0:
                client.write(engine.auth_failed(decision.text, decision.smtp_code))
                self._end("auth rejected")
            await asyncio.sleep(decision.wait)
            client.write(engine.auth_failed(decision.text, decision.smtp_code))
            self.login = None
            return None
        assert isinstance(decision, Backend)
        self.record.auth_result = "ok"
        return await self._login_to_backend(client, engine, credentials, decision, client_host)

    def _internal_error(self, client: Peer, engine: PreAuthEngine) -> NoReturn:
        client.write(engine.internal_error_line)
        self._end("internal error")

    # -- backend

    def _backend_login_for(
        self, credentials: Credentials, login: bytes, password: bytes | None, client_host: str
    ) -> BackendLogin:
        return backend_login_for(
            self.server,
            credentials,
            login=login,
            password=password,
            client_address=self.client_address.text,
            client_host=client_host,
        )

    def _login_plan(
        self, client: Peer, engine: PreAuthEngine, credentials: Credentials, client_host: str
    ) -> _LoginPlan | None:
        """The backend login the usual auth reply leads to (the client's own login and password), for the
        auth connection to start by itself; None where the session must see the reply first."""
        if (
            credentials.method is not AuthMethod.PLAIN
            or self.server.proxy.proxy_protocol is not ProxyProtocolOut.OFF
        ):
            return None
        login = self._backend_login_for(credentials, credentials.login, credentials.password, client_host)
        answers = login.answers()
        final = login.final_reply(len(answers))
        if final is None:
            return None
        proxy = self.server.proxy
        on_start = self._logged_in_to if self.log.enabled(LogLevel.INFO) else None
        connection_plan = (
            client,
            self.server.core.timeout,
            proxy.timeout,
            answers,
            proxy.buffer,
            final.prefix,
            final.replacement,
            engine.unconsumed(),
            on_start,
        )
        return _LoginPlan(login, connection_plan)

    async def _login_started(
        self, client: Peer, engine: PreAuthEngine, plan: _LoginPlan, started: LoginStarted
    ) -> RelayOutcome:
        """The auth connection took the auth server's success and started `plan`'s login itself."""
        self.record.auth_result = "ok"
        self.upstream = self.record.upstream = started.upstream
        self.backend = peer = started.backend
        relay = started.relay
        login = plan.login
        login.answered(peer.exchanged)
        self.action = login.action
        result = started.result
        if isinstance(result, RelayOutcome):
            self.action = "proxying"
            return result
        if result is None:
            peer.set_deadline(None)
            self._backend_timed_out(client, login)
        to_backend = engine.take_unconsumed()
        client_bytes = await self._judge_login(
            peer, login, result, client=client, engine=engine, upstream=started.upstream
        )
        return await self._relay_after_judged_login(client, relay, client_bytes, to_backend)

    async def _login_to_backend(
        self,
        client: Peer,
        engine: PreAuthEngine,
        credentials: Credentials,
        backend: Backend,
        client_host: str,
    ) -> RelayOutcome:
        self.upstream = backend.upstream
        self.record.upstream = backend.upstream
        deadline = self.loop.time() + self.server.core.timeout
        login = self._backend_login_for(credentials, backend.login, backend.password, client_host)
        self.action = login.action
        try:
            peer = Peer.connect(self.runtime.reactor, backend.family, backend.address, backend.port)
        except OSError as error:
            self._backend_connect_failed(client, engine, backend.upstream, error)
        self.backend = peer
        peer.set_deadline(deadline)
        # The PROXY header and the login are written and read while the connect is under way: the
        # connection sends them once connected, without waking the session in between.
        version = self.server.proxy.proxy_protocol
        if version is not ProxyProtocolOut.OFF:  # only then: our local address costs a system call
            header = build_proxy_header(version, self.client_address, self.local_address, self._tls_facts())
            assert header is not None
            self.action = UpstreamAction.SENDING_PROXY_HEADER
            peer.write(header)
            self.action = login.action
        relay = Relay(client, peer, self.server.proxy.timeout, quiet_on_timeout=True)
        to_backend = engine.take_unconsumed()
        capacity = self.server.proxy.buffer
        try:
            try:  # the replies a prefix accepts are answered by the connection, without a wake-up each
                answers = login.answers()
                final = login.final_reply(len(answers))
                if final is None:
                    result: bytes | RelayOutcome = await peer.exchange(answers, capacity)
                else:
                    on_start = self._logged_in if self.log.enabled(LogLevel.INFO) else None
                    result = await relay.run_after_login(answers, capacity, final, to_backend, on_start)
            finally:
                login.answered(peer.exchanged)
                self.action = login.action
        except TimeoutError:
            peer.set_deadline(None)
            self._backend_timed_out(client, login)
        if isinstance(result, RelayOutcome):  # the connection took the last reply and relayed
            self.action = "proxying"
            return result
        client_bytes = await self._judge_login(
            peer, login, result, client=client, engine=engine, upstream=backend.upstream
        )
        return await self._relay_after_judged_login(client, relay, client_bytes, to_backend)

    async def _relay_after_judged_login(
        self, client: Peer, relay: Relay, client_bytes: bytes, to_backend: bytes
    ) -> RelayOutcome:
        client.set_deadline(None)
        self._logged_in()
        return await relay.run(client_bytes, to_backend)

    async def _judge_login(
        self,
        peer: Peer,
        login: BackendLogin,
        data: bytes,
        *,
        client: Peer,
        engine: PreAuthEngine,
        upstream: str,
    ) -> bytes:
        """The login on `peer` from the first reply its connection did not answer, `data`, on: the bytes
        the client gets first once it succeeded."""
        try:
            if peer.failed_in == "connect":
                assert peer.receive_error is not None
                self._backend_connect_failed(client, engine, upstream, peer.receive_error)
            while True:
                events = login.receive_data(data)
                self.action = login.action
                for event in events:
                    if isinstance(event, Send):
                        peer.write(event.data)
                    elif isinstance(event, Done):
                        return event.client_bytes
                    else:
                        self._backend_failed(client, event)
                data = await peer.read()
        except TimeoutError:
            self._backend_timed_out(client, login)
        finally:
            peer.set_deadline(None)

    def _backend_connect_failed(
        self, client: Peer, engine: PreAuthEngine, upstream: str, error: OSError
    ) -> NoReturn:
        described = f"({error.errno}: {error.strerror})"
        if error.errno in _ASYNC_CONNECT_ERRORS:
            self._log(LogLevel.ERROR, f"recv() failed {described}", UpstreamAction.READING_RESPONSE)
        else:
            self._log(LogLevel.ERROR, f"connect() to {upstream} failed {described}")
        self.record.close_reason = "backend connect failed"
        self._internal_error(client, engine)

    def _backend_timed_out(self, client: Peer, login: BackendLogin) -> NoReturn:
        self.record.close_reason = "backend timed out"
        self._backend_failed(client, login.timed_out())

    def _backend_failed(self, client: Peer, failure: Failed) -> NoReturn:
        if failure.log_message:
            self._log(failure.log_level, failure.log_message)
        client.write(failure.client_bytes)
        self._end("backend login failed")

    # -- ending

    def _end(self, reason: str) -> NoReturn:
        if not self.record.close_reason:
            self.record.close_reason = reason
        raise _SessionEndedError(reason)

    def _close_all(self) -> None:
        if self.backend is not None:
            self.backend.close()
        if self.record.close_reason == "timed out":
            self.client.quiet_shutdown()  # nginx closes a client that timed out without close_notify
        self.client.close()
