"""One worker: accepts on the inherited listening sockets and runs a session per connection on uvloop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from mailgate.auth.client_host import ClientHostResolver
from mailgate.config.model import Config, ErrorLogTarget, LogLevel
from mailgate.log import ErrorLog
from mailgate.server.listeners import Endpoint, ListenerPlan
from mailgate.server.session import ServerRuntime, Session
from mailgate.tls import ServerTls

SessionRunner = Callable[[Endpoint, socket.socket, Any, int], Coroutine[Any, Any, None]]


class Acceptor:
    """Accepts connections on listening sockets and starts one session task for each.

    With `multi_accept on` every pending connection is accepted at each readiness event, otherwise one, as
    nginx does. Beyond `worker_connections` active sessions, accepting pauses until a session ends.
    """

    def __init__(
        self,
        listeners: list[tuple[ListenerPlan, socket.socket]],
        run_session: SessionRunner,
        error_log: ErrorLog,
        *,
        worker_connections: int,
        multi_accept: bool,
    ) -> None:
        self._listeners = listeners
        self._run_session = run_session
        self._error_log = error_log
        self._limit = max(1, worker_connections)
        self._multi_accept = multi_accept
        self._loop = asyncio.get_running_loop()
        self._sessions: set[asyncio.Task[None]] = set()
        self._readers_installed = False
        self._stopped = False
        self._connection_counter = 0
        self._all_done: asyncio.Event = asyncio.Event()
        self._all_done.set()

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        self._stopped = False
        self._install_readers()

    def stop(self) -> None:
        """Stop accepting for good (the sockets stay open: they belong to the master or the next workers)."""
        self._stopped = True
        self._remove_readers()

    def _install_readers(self) -> None:
        if not self._readers_installed:
            self._readers_installed = True
            for plan, sock in self._listeners:
                self._loop.add_reader(sock.fileno(), self._accept, plan, sock)

    def _remove_readers(self) -> None:
        if self._readers_installed:
            self._readers_installed = False
            for _, sock in self._listeners:
                self._loop.remove_reader(sock.fileno())

    async def wait_sessions(self) -> None:
        await self._all_done.wait()

    def cancel_sessions(self) -> None:
        for task in list(self._sessions):
            task.cancel()

    def _accept(self, plan: ListenerPlan, sock: socket.socket) -> None:
        while len(self._sessions) < self._limit:
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._error_log.log(LogLevel.ALERT, f"accept() failed ({error.errno}: {error.strerror})")
                return
            self._start_session(plan, conn, address)
            if not self._multi_accept:
                return
        if len(self._sessions) >= self._limit and self._readers_installed:
            self._error_log.log(LogLevel.ALERT, f"{self._limit} worker_connections are not enough")
            self._remove_readers()  # until a session ends

    def _start_session(self, plan: ListenerPlan, conn: socket.socket, address: Any) -> None:
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # nginx's mail module leaves Nagle on, which stalls replies behind delayed ACKs; we never do.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        endpoint = plan.route(conn.getsockname()) if plan.specific else plan.endpoint
        self._connection_counter += 1
        task = self._loop.create_task(self._run_session(endpoint, conn, address, self._connection_counter))
        self._sessions.add(task)
        self._all_done.clear()
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self._error_log.log(LogLevel.ALERT, f"session failed unexpectedly: {error!r}")
        if not self._sessions:
            self._all_done.set()
        if not self._stopped and len(self._sessions) < self._limit:
            self._install_readers()


class Worker:
    """Everything one worker process runs: the servers' runtimes, the acceptor, and the live sessions."""

    def __init__(
        self,
        config: Config,
        listeners: list[tuple[ListenerPlan, socket.socket]],
        tls: dict[int, ServerTls],
        main_log: ErrorLog,
    ) -> None:
        self.config = config
        self.main_log = main_log
        self._logs: dict[tuple[ErrorLogTarget, ...], ErrorLog] = {}
        self.runtimes: dict[int, ServerRuntime] = {}
        servers = config.mail.servers if config.mail is not None else ()
        for server in servers:
            self.runtimes[id(server)] = ServerRuntime(
                server=server,
                tls=tls.get(id(server)),
                error_log=self._log_for(server.core.error_logs),
                client_host_resolver=ClientHostResolver(server.core),
            )
        self.sessions: set[Session] = set()
        self.acceptor = Acceptor(
            listeners,
            self._run_session,
            main_log,
            worker_connections=config.main.events.worker_connections,
            multi_accept=config.main.events.multi_accept,
        )

    def _log_for(self, targets: tuple[ErrorLogTarget, ...]) -> ErrorLog:
        if not targets:
            return self.main_log
        log = self._logs.get(targets)
        if log is None:
            log = self._logs[targets] = ErrorLog(targets)
            log.open()
        return log

    def reopen_logs(self) -> None:
        self.main_log.reopen()
        for log in self._logs.values():
            log.reopen()

    async def _run_session(
        self, endpoint: Endpoint, sock: socket.socket, address: Any, connection: int
    ) -> None:
        runtime = self.runtimes[id(endpoint.server)]
        session = Session(runtime, endpoint.listen, sock, address, connection)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def start(self) -> None:
        self.acceptor.start()

    async def shutdown(self, *, graceful: bool, timeout: float | None) -> None:
        """Stop accepting; let sessions finish (graceful) until `timeout`, then end them."""
        self.acceptor.stop()
        if graceful and self.sessions:
            try:
                async with asyncio.timeout(timeout):
                    await self.acceptor.wait_sessions()
            except TimeoutError:
                pass
        for session in list(self.sessions):
            session.stop("shutdown")
        if self.sessions:
            try:
                async with asyncio.timeout(5):
                    await self.acceptor.wait_sessions()
            except TimeoutError:
                self.acceptor.cancel_sessions()
        for log in self._logs.values():
            log.close()
