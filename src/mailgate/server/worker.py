"""Workers: accept on the inherited listening sockets and run a session per connection on uvloop.

`Worker` is what one worker runs (also in-process with `master_process off`); `run_worker_process` is the
body of a forked worker process: it drops privileges, makes its own event loop and serves until the master
tells it to stop by signal, as nginx's workers do (`QUIT` graceful, `TERM`/`INT` now, `USR1` reopen logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import resource
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

import setproctitle
import uvloop

from mailgate import tls as mailgate_tls
from mailgate._io import Listener, shared_increment
from mailgate.auth.client_host import ClientHostResolver
from mailgate.config.model import LogLevel, Protocol, VerifyClient
from mailgate.log import ErrorLog, route_python_logger
from mailgate.proxy.relay import Peer, reactor_of
from mailgate.server.generation import Generation, servers_of
from mailgate.server.listeners import Endpoint, ListenerPlan
from mailgate.server.session import ENGINES, FrontEnd, ServerRuntime, Session

SessionRunner = Callable[[Endpoint, Peer, Any, int, FrontEnd | None], Coroutine[Any, Any, None]]
# The arguments of Peer.start_front for one endpoint, but the callback and its context; None: no front.
FrontArguments = tuple[int, float, float, bytes | None, float]


# Signals the master handles itself; blocked in the master, and in a new worker until its handlers are set.
PROCESS_SIGNALS = frozenset(
    {
        signal.SIGCHLD,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGALRM,
    }
)

# Worker exit code that tells the master not to start the worker again (nginx's "fatal code 2").
FATAL_EXIT = 2
# How long accepting pauses when the process has no descriptor left (nginx: 500 ms).
_ACCEPT_PAUSE_ON_EMFILE = 0.5
# After sessions were told to stop, how long they have to close before their tasks are cancelled.
_STOP_GRACE = 5.0


class ConnectionNumbers:
    """nginx's connection counter: one sequence for every worker and every reload, so that `*N` names one
    connection in the whole error log. A counter in a shared page, incremented atomically."""

    def __init__(self) -> None:
        self._fd = os.memfd_create("mailgate-connections", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, mmap.PAGESIZE)
        self._page = mmap.mmap(self._fd, 8)  # MAP_SHARED: forked workers see the same counter
        self._counter = ctypes.addressof(ctypes.c_uint64.from_buffer(self._page))

    def next(self) -> int:
        return shared_increment(self._counter)

    @property
    def address(self) -> int:
        """Where the counter is, for the listeners that number connections in C."""
        return self._counter


class Acceptor:
    """Accepts connections on listening sockets and starts one session task for each.

    With `multi_accept on` every pending connection is accepted at each readiness event, otherwise one, as
    nginx does. Beyond `worker_connections` active sessions, accepting pauses until a session ends; so it
    does for half a second when the process runs out of descriptors.
    """

    def __init__(
        self,
        listeners: list[tuple[ListenerPlan, socket.socket]],
        run_session: SessionRunner,
        error_log: ErrorLog,
        *,
        worker_connections: int,
        multi_accept: bool,
        connection_numbers: ConnectionNumbers,
        front_for: Callable[[Endpoint], FrontArguments | None] = lambda endpoint: None,
    ) -> None:
        self._run_session = run_session
        self._front_for = front_for
        self._fronts: dict[int, FrontArguments | None] = {}
        self._front_peers: set[Peer] = set()
        self._error_log = error_log
        self._limit = max(1, worker_connections)
        self._connection_numbers = connection_numbers
        self._loop = asyncio.get_running_loop()
        reactor = reactor_of(self._loop)
        # Accepted in C (mailgate._io): each connection arrives as a Peer, with TCP_NODELAY set.
        self._listeners = [
            Listener(reactor, sock.fileno(), functools.partial(self._accepted, plan), multi_accept)
            for plan, sock in listeners
        ]
        self._sessions: set[asyncio.Task[None]] = set()
        self._readers_installed = False
        self._stopped = False
        self._paused = False
        self._all_done: asyncio.Event = asyncio.Event()
        self._all_done.set()
        # Where one endpoint has the socket to itself and its sessions a front, the listener starts the
        # front in C, and a connection that leaves before its first command never reaches Python.
        for (plan, _sock), listener in zip(listeners, self._listeners, strict=True):
            front = None if plan.specific else front_for(plan.endpoint)
            if front is not None:
                listener.set_front(
                    front,
                    plan.endpoint,
                    self._front_done,
                    self._front_peers,
                    self._sessions,
                    self._limit,
                    connection_numbers.address,
                    self._all_done.clear,
                    self._slot_freed,
                    self._room_for_more,
                )

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def fronts_running(self) -> int:
        """Connections whose front (Peer.start_front) still runs: no session has them yet."""
        return len(self._front_peers)

    def start(self) -> None:
        self._stopped = False
        self._install_readers()

    def stop(self) -> None:
        """Stop accepting for good (the sockets stay open: they belong to the master or the next workers)."""
        self._stopped = True
        self._remove_readers()

    def _install_readers(self) -> None:
        if not self._readers_installed and not self._stopped and not self._paused:
            self._readers_installed = True
            for listener in self._listeners:
                listener.start()

    def _remove_readers(self) -> None:
        if self._readers_installed:
            self._readers_installed = False
            for listener in self._listeners:
                listener.stop()

    async def wait_sessions(self) -> None:
        await self._all_done.wait()

    def cancel_sessions(self) -> None:
        self.abort_fronts()
        for task in list(self._sessions):
            task.cancel()

    def abort_fronts(self) -> None:
        """End the connections whose front still runs (no session has them yet)."""
        for peer in list(self._front_peers):
            peer.abort()

    def _accepted(self, plan: ListenerPlan, peer: Peer | None, address: Any) -> bool:
        """One connection accepted (or accept() failed: `address` is the error); whether to accept more."""
        if peer is None:
            self._accept_failed(address)
            return bool(address.errno == errno.ECONNABORTED)
        endpoint = plan.route(peer.getsockname()) if plan.specific else plan.endpoint
        number = self._connection_numbers.next()
        key = id(endpoint)
        if key not in self._fronts:
            self._fronts[key] = self._front_for(endpoint)
        front = self._fronts[key]
        self._all_done.clear()
        if front is None:
            self._start_session(endpoint, peer, address, number, None)
        else:
            self._front_peers.add(peer)
            peer.start_front(*front, self._front_done, (endpoint, address, number))
        return self._room_for_more()

    def _room_for_more(self) -> bool:
        """Whether to accept more: at worker_connections, nginx's alert and none until a session ends."""
        if len(self._sessions) + len(self._front_peers) < self._limit:
            return True
        if self._readers_installed:
            self._error_log.log(LogLevel.ALERT, f"{self._limit} worker_connections are not enough")
            self._remove_readers()  # until a session ends
        return False

    def _start_session(
        self, endpoint: Endpoint, peer: Peer, address: Any, number: int, front: FrontEnd | None
    ) -> None:
        task = self._loop.create_task(self._run_session(endpoint, peer, address, number, front))
        self._sessions.add(task)
        task.add_done_callback(self._session_done)

    def _front_done(self, context: tuple[Endpoint, Any, int], peer: Peer, stage: str, error: Any) -> None:
        self._front_peers.discard(peer)
        if stage != "closed":
            endpoint, address, number = context
            self._start_session(endpoint, peer, address, number, FrontEnd(stage, error))
        else:
            self._slot_freed()

    def _accept_failed(self, error: OSError) -> None:
        level = LogLevel.ERROR if error.errno == errno.ECONNABORTED else LogLevel.ALERT
        self._error_log.log(level, f"accept() failed ({error.errno}: {error.strerror})")
        if error.errno in (errno.EMFILE, errno.ENFILE):
            # Level-triggered readiness would spin on a socket we cannot accept from; wait for descriptors.
            self._paused = True
            self._remove_readers()
            self._loop.call_later(_ACCEPT_PAUSE_ON_EMFILE, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if len(self._sessions) < self._limit:
            self._install_readers()

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self._error_log.log(LogLevel.ALERT, f"session failed unexpectedly: {error!r}")
        self._slot_freed()

    def _slot_freed(self) -> None:
        if not self._sessions and not self._front_peers:
            self._all_done.set()
        if len(self._sessions) + len(self._front_peers) < self._limit:
            self._install_readers()


class Worker:
    """Everything one worker runs for one generation: the servers' runtimes, the acceptor, the sessions."""

    def __init__(self, generation: Generation, connection_numbers: ConnectionNumbers) -> None:
        self.generation = generation
        self.config = generation.config
        self.main_log = generation.main_log
        self.runtimes: dict[int, ServerRuntime] = {}
        loop = asyncio.get_running_loop()
        for server in servers_of(self.config):
            self.runtimes[id(server)] = ServerRuntime(
                server=server,
                tls=generation.tls.get(id(server)),
                error_log=generation.error_log_for(server),
                client_host_resolver=ClientHostResolver(server.core),
                reactor=reactor_of(loop),
                loop=loop,
                session_log=generation.session_log_for(server) is not None,
            )
        self.sessions: set[Session] = set()
        self.acceptor = Acceptor(
            generation.listeners,
            self._run_session,
            self.main_log,
            worker_connections=self.config.main.events.worker_connections,
            multi_accept=self.config.main.events.multi_accept,
            connection_numbers=connection_numbers,
            front_for=self.front_for,
        )

    def front_for(self, endpoint: Endpoint) -> FrontArguments | None:
        """What the front of this endpoint's sessions can do in C before the session exists, or None.

        A front only runs where its quiet endings (a client that closes or times out before its first
        command) log nothing: error_log above info and no session log. It greets when the greeting is
        the same for every session and nothing has to happen before it (client certificate checks, the
        SMTP client host lookup); with TLS it runs the handshake either way.
        """
        runtime = self.runtimes[id(endpoint.server)]
        listen, server = endpoint.listen, endpoint.server
        if listen.proxy_protocol or runtime.session_log or runtime.error_log.enabled(LogLevel.INFO):
            return None
        greeting: bytes | None = None
        if server.protocol is not Protocol.SMTP and not (
            listen.ssl and server.ssl.verify_client is not VerifyClient.OFF
        ):
            engine = ENGINES[server.protocol](server, tls_active=listen.ssl)
            if engine.greeting_is_constant:
                greeting = engine.greeting()
        if not listen.ssl and greeting is None:
            return None  # nothing to do before the session
        ssl_ctx = runtime.tls.ssl_ctx if listen.ssl and runtime.tls is not None else 0
        timeout = server.core.timeout
        return (ssl_ctx, timeout, mailgate_tls.SHUTDOWN_TIMEOUT, greeting, timeout)

    async def _run_session(
        self, endpoint: Endpoint, peer: Peer, address: Any, connection: int, front: FrontEnd | None
    ) -> None:
        runtime = self.runtimes[id(endpoint.server)]
        session = Session(runtime, endpoint.listen, peer, address, connection, front=front)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            session_log = self.generation.session_log_for(endpoint.server)
            if session_log is not None:
                session_log.write(session.record.log_entry())

    def start(self) -> None:
        self.acceptor.start()

    def stop_accepting(self) -> None:
        self.acceptor.stop()

    async def shutdown(self, *, graceful: bool, timeout: float | None) -> None:
        """Stop accepting; let sessions finish (graceful) until `timeout` (None: however long they take),
        then end them: relays log nginx's `shutdown timeout`, a fast stop ends them without a word."""
        self.acceptor.stop()
        if graceful and (self.sessions or self.acceptor.fronts_running):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.acceptor.wait_sessions()
        self.acceptor.abort_fronts()
        for session in list(self.sessions):
            session.stop("shutdown timeout" if graceful else "worker exiting")
        if self.sessions:
            try:
                async with asyncio.timeout(_STOP_GRACE):
                    await self.acceptor.wait_sessions()
            except TimeoutError:
                self.acceptor.cancel_sessions()
                await self.acceptor.wait_sessions()


# ---------------------------------------------------------------------------------------------------------
# The worker process


@dataclass(frozen=True)
class WorkerUser:
    """Who workers run as when the master is root (`user`, default nobody)."""

    name: str
    uid: int
    gid: int


class _WorkerInitError(Exception):
    """A worker cannot start (nginx exits such a worker with code 2, and the master does not respawn it)."""


def run_worker_process(
    generation: Generation, connection_numbers: ConnectionNumbers, user: WorkerUser | None
) -> NoReturn:
    """The body of a freshly forked worker; never returns (`os._exit`, so no parent's cleanup runs twice)."""
    code = 0
    try:
        route_python_logger("mailgate.tls", generation.main_log)
        _init_process(generation, user)
        # Titled once initialised (limits, user), as nginx's worker: a titled worker is a ready one.
        setproctitle.setproctitle("mailgate: worker process")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(generation, connection_numbers))
    except _WorkerInitError as error:
        generation.main_log.log(LogLevel.EMERG, str(error))
        code = FATAL_EXIT
    except BaseException:  # a bug must leave a trace in the log, not only a dead worker
        generation.main_log.log(LogLevel.ALERT, "worker process failed: " + traceback.format_exc().strip())
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _init_process(generation: Generation, user: WorkerUser | None) -> None:
    """nginx's ngx_worker_process_init: environment, descriptor limit, then the unprivileged user."""
    main = generation.config.main
    _set_environment(main.env)
    if main.worker_rlimit_nofile is not None:
        limit = main.worker_rlimit_nofile
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        except (OSError, ValueError) as error:
            number = getattr(error, "errno", None) or errno.EPERM
            generation.main_log.log(
                LogLevel.ALERT, f"setrlimit(RLIMIT_NOFILE, {limit}) failed ({number}: {os.strerror(number)})"
            )
    if user is not None and os.geteuid() == 0:
        _become(user)


def _set_environment(env: tuple[tuple[str, str | None], ...]) -> None:
    """Workers see only TZ and the variables `env` names, as nginx's workers."""
    kept = {"TZ": os.environ.get("TZ")}
    for name, value in env:
        kept[name] = value if value is not None else os.environ.get(name)
    os.environ.clear()
    os.environ.update({name: value for name, value in kept.items() if value is not None})


def _become(user: WorkerUser) -> None:
    call = f"setgid({user.gid})"
    try:
        os.setgid(user.gid)
        call = f"initgroups({user.name}, {user.gid})"
        os.initgroups(user.name, user.gid)
        call = f"setuid({user.uid})"
        os.setuid(user.uid)
    except OSError as error:
        raise _WorkerInitError(f"{call} failed ({error.errno}: {error.strerror})") from None


async def _serve(generation: Generation, connection_numbers: ConnectionNumbers) -> None:
    loop = asyncio.get_running_loop()
    log = generation.main_log
    worker = Worker(generation, connection_numbers)
    stop: asyncio.Future[bool] = loop.create_future()

    fast_stops: list[asyncio.Task[None]] = []

    def request_stop(graceful: bool) -> None:
        if not stop.done():
            stop.set_result(graceful)
        elif not graceful:
            # TERM during a graceful stop: end the sessions now.
            fast_stops.append(loop.create_task(worker.shutdown(graceful=False, timeout=0)))

    def reopen_logs() -> None:
        log.log(LogLevel.NOTICE, "reopening logs")
        for failure in generation.reopen_logs():
            log.log(LogLevel.EMERG, failure)

    loop.add_signal_handler(signal.SIGQUIT, request_stop, True)
    loop.add_signal_handler(signal.SIGTERM, request_stop, False)
    loop.add_signal_handler(signal.SIGINT, request_stop, False)
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
    for ignored in (signal.SIGHUP, signal.SIGUSR2, signal.SIGWINCH, signal.SIGALRM):
        signal.signal(ignored, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PROCESS_SIGNALS)
    worker.start()
    graceful = await stop
    if graceful:
        log.log(LogLevel.NOTICE, "gracefully shutting down")
        setproctitle.setproctitle("mailgate: worker process is shutting down")
    worker.stop_accepting()
    for _, sock in generation.listeners:
        sock.close()  # this process's copies: the master and the next workers keep theirs
    await worker.shutdown(graceful=graceful, timeout=generation.config.main.worker_shutdown_timeout)
    log.log(LogLevel.NOTICE, "exiting")
    log.log(LogLevel.NOTICE, "exit")
