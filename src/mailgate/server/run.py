"""Starting the server: TLS contexts, listening sockets and logs, then the pid file, then serving as a master
with workers or, with `master_process off`, in this one process.

Both modes act on the same signals: `HUP` reload (new sessions get the new configuration, running ones finish
on the old), `QUIT` graceful stop, `TERM`/`INT` fast stop, `USR1` reopen logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable

import uvloop

from mailgate.config import load
from mailgate.config.errors import ConfigError
from mailgate.config.model import Config, LogLevel
from mailgate.log import ErrorLog, route_python_logger
from mailgate.server.generation import Generation, StartupError, prepare
from mailgate.server.master import Master, ReloadConfig
from mailgate.server.process import (
    EVENT_METHOD,
    daemonize,
    log_startup,
    redirect_stderr,
    remove_pid_file,
    signal_received,
    write_pid_file,
)
from mailgate.server.worker import PROCESS_SIGNALS, ConnectionNumbers, Worker

Report = Callable[[LogLevel, str], None]


def run(config: Config, report: Report, reload_config: ReloadConfig | None = None) -> int:
    """Serve `config` until stopped; `report` shows startup failures as nginx does (`[emerg] ...` on stderr).

    `reload_config` reads the configuration again for `HUP` as the command line read it (`-c`, `-p`, `-g`,
    `-e`); without it, the same file under the same prefix is read.
    """
    try:
        generation = prepare(config)
    except StartupError as error:
        report(LogLevel.EMERG, str(error))
        return 1
    route_python_logger("mailgate.tls", generation.main_log)
    for warning in generation.tls_warnings:
        report(LogLevel.WARN, warning)
    if config.main.daemon:
        daemonize()
    # From here until exit, signals are taken one at a time where the process is ready for them.
    signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)
    pid_file = config.main.pid
    if pid_file is not None:
        try:
            write_pid_file(pid_file)
        except OSError as error:
            message = f'open() "{pid_file}" failed ({error.errno}: {error.strerror})'
            report(LogLevel.EMERG, message)
            generation.main_log.log(LogLevel.EMERG, message)
            generation.close()
            return 1
    redirect_stderr(generation.main_log)
    log_startup(generation.main_log)
    numbers = ConnectionNumbers()
    reload_config = reload_config or _reread(config)
    if config.main.master_process:
        return Master(generation, reload_config, numbers).run(" ".join(sys.argv))
    return SingleProcess(generation, reload_config, numbers).run()


def _reread(config: Config) -> ReloadConfig:
    def reread(error_log: ErrorLog) -> Config:
        loaded = load(config.conf_file, config.prefix)
        for warning in loaded.warnings:
            error_log.log(LogLevel(warning.level), str(warning))
        return loaded.config

    return reread


class SingleProcess:
    """`master_process off`: one process serves, and a reload runs the new generation beside the old one."""

    def __init__(
        self, generation: Generation, reload_config: ReloadConfig, numbers: ConnectionNumbers
    ) -> None:
        self.generation = generation
        self.reload_config = reload_config
        self.numbers = numbers
        self.pid_file = generation.config.main.pid
        self._retiring: dict[asyncio.Task[None], tuple[Worker, Generation]] = {}

    @property
    def log(self) -> ErrorLog:
        return self.generation.main_log

    def run(self) -> int:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._serve())
        finally:
            if self.pid_file is not None:
                remove_pid_file(self.pid_file)
            self.generation.close()
        return 0

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

        def take_signals() -> None:
            # sigwaitinfo, unlike a signal handler, says who sent the signal (nginx logs it).
            while True:
                info = signal.sigwaitinfo(PROCESS_SIGNALS)
                loop.call_soon_threadsafe(received.put_nowait, (info.si_signo, info.si_pid))

        threading.Thread(target=take_signals, name="signals", daemon=True).start()
        worker = Worker(self.generation, self.numbers)
        worker.start()
        while True:
            signum, sender = await received.get()
            if signum in (signal.SIGCHLD, signal.SIGALRM):
                continue
            self.log.log(LogLevel.NOTICE, signal_received(signum, sender))
            if signum == signal.SIGHUP:
                worker = self._reload(worker)
            elif signum == signal.SIGUSR1:
                self._reopen_logs()
            elif signum in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
                await self._stop(worker, graceful=signum == signal.SIGQUIT)
                return

    def _reload(self, worker: Worker) -> Worker:
        self.log.log(LogLevel.NOTICE, "reconfiguring")
        old = self.generation
        try:
            config = self.reload_config(old.main_log)
            new = prepare(config, previous=old)
        except ConfigError as error:
            for warning in error.warnings:
                old.main_log.log(LogLevel(warning.level), str(warning))
            old.main_log.log(LogLevel(error.level), str(error))
            return worker
        except StartupError as error:
            old.main_log.log(LogLevel.EMERG, str(error))
            return worker
        for tls_warning in new.tls_warnings:
            old.main_log.log(LogLevel.WARN, tls_warning)
        old.main_log.log(LogLevel.NOTICE, EVENT_METHOD)
        worker.stop_accepting()
        old.close_listeners(keep=new.listeners)
        self.generation = new
        route_python_logger("mailgate.tls", new.main_log)
        redirect_stderr(new.main_log)
        successor = Worker(new, self.numbers)
        successor.start()
        timeout = old.config.main.worker_shutdown_timeout
        retiring = asyncio.get_running_loop().create_task(worker.shutdown(graceful=True, timeout=timeout))
        self._retiring[retiring] = (worker, old)
        retiring.add_done_callback(self._retired)
        return successor

    def _retired(self, task: asyncio.Task[None]) -> None:
        _, old = self._retiring.pop(task)
        old.listeners.clear()  # closed (or handed on) when the reload took place
        old.close_logs()

    def _reopen_logs(self) -> None:
        self.log.log(LogLevel.NOTICE, "reopening logs")
        for generation in (self.generation, *(old for _, old in self._retiring.values())):
            for failure in generation.reopen_logs():
                self.log.log(LogLevel.EMERG, failure)
        redirect_stderr(self.generation.main_log)

    async def _stop(self, worker: Worker, *, graceful: bool) -> None:
        if graceful:
            self.log.log(LogLevel.NOTICE, "gracefully shutting down")
        timeout = self.generation.config.main.worker_shutdown_timeout
        stopping = [worker.shutdown(graceful=graceful, timeout=timeout)]
        if not graceful:
            stopping += [old.shutdown(graceful=False, timeout=0) for old, _ in self._retiring.values()]
        await asyncio.gather(*stopping, *self._retiring, return_exceptions=True)
        self.log.log(LogLevel.NOTICE, "exiting" if graceful else "exit")
        if graceful:
            self.log.log(LogLevel.NOTICE, "exit")
        with contextlib.suppress(Exception):
            sys.stdout.flush()
