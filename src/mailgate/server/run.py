"""Starting and stopping the server process: TLS contexts, listening sockets, pid file, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop

from mailgate import __version__
from mailgate.config.errors import ConfigError
from mailgate.config.model import Config, LogLevel
from mailgate.log import ErrorLog
from mailgate.server.listeners import ListenerPlan, ListenError, open_listeners, plan_listeners
from mailgate.server.worker import Worker
from mailgate.tls import ServerTls, build_server_context


class StartupError(Exception):
    """Why the server could not start, worded for `[emerg]`."""


@dataclass
class Prepared:
    """What a configuration needs before serving: TLS contexts (by server id) and open listening sockets."""

    config: Config
    tls: dict[int, ServerTls]
    listeners: list[tuple[ListenerPlan, socket.socket]]

    def close(self) -> None:
        for _, sock in self.listeners:
            sock.close()


def build_tls(config: Config) -> dict[int, ServerTls]:
    """An SSL context for every server that needs one (raises ConfigError, as `-t` reports it)."""
    servers = config.mail.servers if config.mail is not None else ()
    prefix = config.conf_file.parent  # relative ssl_conf_command files resolve against the config's directory
    return {id(server): build_server_context(server, prefix=prefix) for server in servers if server.needs_tls}


def prepare(config: Config) -> Prepared:
    """Build TLS contexts and bind every listening socket (raises StartupError)."""
    try:
        tls = build_tls(config)
    except ConfigError as error:
        raise StartupError(str(error)) from None
    servers = config.mail.servers if config.mail is not None else ()
    try:
        listeners = open_listeners(plan_listeners(servers))
    except ListenError as error:
        raise StartupError(str(error)) from None
    return Prepared(config, tls, listeners)


def write_pid_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, path)  # never a half-written pid file for a script to read


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()


def daemonize() -> None:
    """Detach from the terminal as nginx does (`daemon on`): fork, new session, stdio to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)


def serve_single_process(prepared: Prepared, main_log: ErrorLog) -> int:
    """Serve in this process until a stop signal (`master_process off`)."""
    config = prepared.config
    pid_file = config.main.pid
    if config.main.daemon:
        daemonize()
    if pid_file is not None:
        write_pid_file(pid_file)
    main_log.log(LogLevel.NOTICE, f"mailgate/{__version__}")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(prepared, main_log))
    finally:
        prepared.close()
        if pid_file is not None:
            remove_pid_file(pid_file)
    return 0


async def _serve(prepared: Prepared, main_log: ErrorLog) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(prepared.config, prepared.listeners, prepared.tls, main_log)
    stop: asyncio.Future[bool] = loop.create_future()

    def request_stop(graceful: bool, signame: str) -> None:
        main_log.log(
            LogLevel.NOTICE, f"signal {signame} received, {'shutting down' if graceful else 'exiting'}"
        )
        if not stop.done():
            stop.set_result(graceful)

    loop.add_signal_handler(signal.SIGTERM, request_stop, False, "15 (SIGTERM)")
    loop.add_signal_handler(signal.SIGINT, request_stop, False, "2 (SIGINT)")
    loop.add_signal_handler(signal.SIGQUIT, request_stop, True, "3 (SIGQUIT)")
    loop.add_signal_handler(signal.SIGUSR1, worker.reopen_logs)
    worker.start()
    graceful = await stop
    await worker.shutdown(graceful=graceful, timeout=prepared.config.main.worker_shutdown_timeout)
    main_log.log(LogLevel.NOTICE, "exit")
    sys.stdout.flush()


def run(config: Config, report: Callable[[LogLevel, str], None]) -> int:
    """Start serving `config`; `report` shows startup failures as nginx does (`[emerg] ...` on stderr)."""
    main_log = ErrorLog(config.main.error_logs)
    try:
        main_log.open()
    except OSError as error:
        path = next((t.path for t in config.main.error_logs if t.path is not None), "")
        report(LogLevel.EMERG, f'open() "{path}" failed ({error.errno}: {error.strerror})')
        return 1
    try:
        prepared = prepare(config)
    except StartupError as error:
        report(LogLevel.EMERG, str(error))
        main_log.log(LogLevel.EMERG, str(error))
        return 1
    return serve_single_process(prepared, main_log)
