"""The master process: it owns the listening sockets and the logs, starts the workers and acts on signals.

As nginx's master: `HUP` reads the configuration again and, if it is good, starts new workers on it before
telling the old ones to finish their sessions (`QUIT`); `QUIT` stops gracefully, `TERM`/`INT` at once;
`USR1` reopens the log files; a worker that dies is replaced. It runs no event loop: signals stay blocked
and are taken one at a time with sigtimedwait, so nothing happens between two of them.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import setproctitle

from mailgate.config.errors import ConfigError
from mailgate.config.model import Config, LogLevel
from mailgate.log import ErrorLog, route_python_logger
from mailgate.server.generation import Generation, StartupError, prepare
from mailgate.server.process import (
    EVENT_METHOD,
    redirect_stderr,
    remove_pid_file,
    signal_received,
    worker_user,
    write_pid_file,
)
from mailgate.server.worker import (
    FATAL_EXIT,
    PROCESS_SIGNALS,
    ConnectionNumbers,
    WorkerUser,
    run_worker_process,
)

# Reads the configuration again for `HUP` (warnings to the given log); raises ConfigError.
ReloadConfig = Callable[[ErrorLog], Config]

# After TERM, how long workers have to end their sessions and exit before they are killed.
_TERMINATE_GRACE = 5.0


@dataclass
class WorkerProcess:
    pid: int
    generation: Generation
    exiting: bool = False  # told to stop: not replaced when it exits


class Master:
    """Runs until every worker has exited after `QUIT` or `TERM`."""

    def __init__(
        self, generation: Generation, reload_config: ReloadConfig, connection_numbers: ConnectionNumbers
    ) -> None:
        self.generation = generation
        self.reload_config = reload_config
        self.connection_numbers = connection_numbers
        self.user: WorkerUser | None = worker_user(generation.config)
        self.workers: dict[int, WorkerProcess] = {}
        self.pid_file = generation.config.main.pid
        self._quitting = False
        self._terminating = False
        self._kill_at: float | None = None

    @property
    def log(self) -> ErrorLog:
        return self.generation.main_log

    def run(self, title: str) -> int:
        """Serve until stopped; the caller blocked PROCESS_SIGNALS and wrote the pid file."""
        setproctitle.setproctitle(f"mailgate: master process {title}")
        self._start_workers()
        while self.workers or not (self._quitting or self._terminating):
            timeout = None if self._kill_at is None else max(0.0, self._kill_at - time.monotonic())
            if timeout is None:
                received: signal.struct_siginfo | None = signal.sigwaitinfo(PROCESS_SIGNALS)
            else:
                received = signal.sigtimedwait(PROCESS_SIGNALS, timeout)
            if received is not None:
                self._on_signal(received.si_signo, received.si_pid)
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                self._signal_workers(signal.SIGKILL)
                self._kill_at = None
        self.log.log(LogLevel.NOTICE, "exit")
        if self.pid_file is not None:
            remove_pid_file(self.pid_file)
        self.generation.close()
        return 0

    # -- signals

    def _on_signal(self, signum: int, sender: int) -> None:
        if signum != signal.SIGALRM:
            self.log.log(LogLevel.NOTICE, signal_received(signum, sender))
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == signal.SIGHUP:
            self._reload()
        elif signum == signal.SIGQUIT:
            if not self._terminating:
                self._quitting = True
                self._signal_workers(signal.SIGQUIT)
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if not self._terminating:
                self._terminating = True
                self._kill_at = time.monotonic() + _TERMINATE_GRACE
                self._signal_workers(signal.SIGTERM)
        elif signum == signal.SIGUSR1:
            self._reopen_logs()

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers.values():
            if signum != signal.SIGUSR1:
                worker.exiting = True
            self._kill(worker.pid, signum)

    def _kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # already gone; its SIGCHLD is on the way
        except OSError as error:
            self.log.log(LogLevel.ALERT, f"kill({pid}, {signum}) failed ({error.errno}: {error.strerror})")

    # -- workers

    def _start_workers(self) -> None:
        self.log.log(LogLevel.NOTICE, "start worker processes")
        for _ in range(max(1, self.generation.config.main.worker_processes)):
            self._spawn()

    def _spawn(self) -> None:
        # The master's objects go to the collector's permanent generation across fork(): a worker's full
        # collection would otherwise write to every inherited object's header and copy the whole heap.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as error:
            gc.unfreeze()
            self.log.log(
                LogLevel.ALERT,
                f'fork() failed while spawning "worker process" ({error.errno}: {error.strerror})',
            )
            return
        if pid == 0:
            run_worker_process(self.generation, self.connection_numbers, self.user)
        gc.unfreeze()  # the master's own garbage (an old generation after a reload) stays collectable
        self.workers[pid] = WorkerProcess(pid, self.generation)
        self.log.log(LogLevel.NOTICE, f"start worker process {pid}")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            respawn = not worker.exiting and not (self._quitting or self._terminating)
            if os.WIFSIGNALED(status):
                core = " (core dumped)" if os.WCOREDUMP(status) else ""
                self.log.log(
                    LogLevel.ALERT, f"worker process {pid} exited on signal {os.WTERMSIG(status)}{core}"
                )
            else:
                code = os.waitstatus_to_exitcode(status)
                self.log.log(LogLevel.NOTICE, f"worker process {pid} exited with code {code}")
                if code == FATAL_EXIT and respawn:
                    self.log.log(
                        LogLevel.ALERT,
                        f"worker process {pid} exited with fatal code {code} and cannot be respawned",
                    )
                    respawn = False
            if respawn and worker.generation is self.generation:
                self._spawn()

    # -- reload and reopen

    def _reload(self) -> None:
        if self._quitting or self._terminating:
            return
        self.log.log(LogLevel.NOTICE, "reconfiguring")
        old = self.generation
        try:
            config = self.reload_config(old.main_log)
            new = prepare(config, previous=old)
        except ConfigError as error:
            for warning in error.warnings:
                old.main_log.log(LogLevel(warning.level), str(warning))
            old.main_log.log(LogLevel(error.level), str(error))
            return
        except StartupError as error:
            old.main_log.log(LogLevel.EMERG, str(error))
            return
        for tls_warning in new.tls_warnings:
            old.main_log.log(LogLevel.WARN, tls_warning)
        old.main_log.log(LogLevel.NOTICE, EVENT_METHOD)
        old.close_listeners(keep=new.listeners)
        self.generation = new
        self.user = worker_user(config)
        route_python_logger("mailgate.tls", new.main_log)
        redirect_stderr(new.main_log)
        self._move_pid_file(config.main.pid)
        old.close_logs()  # the master's copies (not to be inherited); old workers keep writing through theirs
        self._start_workers()
        for worker in self.workers.values():
            if worker.generation is old:
                worker.exiting = True
                self._kill(worker.pid, signal.SIGQUIT)

    def _move_pid_file(self, path: Path | None) -> None:
        if path == self.pid_file:
            return
        if path is not None:
            try:
                write_pid_file(path)
            except OSError as error:
                self.log.log(LogLevel.EMERG, f'open() "{path}" failed ({error.errno}: {error.strerror})')
                return
        if self.pid_file is not None:
            remove_pid_file(self.pid_file)
        self.pid_file = path

    def _reopen_logs(self) -> None:
        self.log.log(LogLevel.NOTICE, "reopening logs")
        owner = (self.user.uid, self.user.gid) if self.user is not None else None
        for failure in self.generation.reopen_logs(owner):
            self.log.log(LogLevel.EMERG, failure)
        redirect_stderr(self.generation.main_log)
        self._signal_workers(signal.SIGUSR1)
