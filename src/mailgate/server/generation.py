"""A generation: what one configuration needs before workers fork (nginx's cycle).

The master builds a generation at startup and at each reload: TLS contexts (so that ticket keys are shared by
the workers), listening sockets (the ones of the previous generation are used again for addresses that stay)
and every log file, opened while the master still has the rights to open them. Workers inherit it by fork().
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from mailgate.config.errors import ConfigError
from mailgate.config.model import Config, ErrorLogTarget, ServerConfig, SessionLogTarget
from mailgate.log import ErrorLog, SessionLog
from mailgate.server.listeners import (
    ListenerPlan,
    ListenError,
    close_listener,
    listener_key,
    open_listeners,
    plan_listeners,
)
from mailgate.tls import ServerTls, build_server_context


class StartupError(Exception):
    """Why a configuration cannot be served, worded for `[emerg]`."""


def servers_of(config: Config) -> tuple[ServerConfig, ...]:
    return config.mail.servers if config.mail is not None else ()


@dataclass
class Generation:
    """TLS contexts (by server id), listening sockets and open logs of one configuration."""

    config: Config
    tls: dict[int, ServerTls]
    listeners: list[tuple[ListenerPlan, socket.socket]]
    main_log: ErrorLog
    server_logs: dict[int, ErrorLog] = field(default_factory=dict)  # servers with their own error_log
    session_logs: dict[int, SessionLog] = field(default_factory=dict)

    def error_log_for(self, server: ServerConfig) -> ErrorLog:
        return self.server_logs.get(id(server), self.main_log)

    def session_log_for(self, server: ServerConfig) -> SessionLog | None:
        return self.session_logs.get(id(server))

    @property
    def tls_warnings(self) -> list[str]:
        return [warning for tls in self.tls.values() for warning in tls.warnings]

    def _all_logs(self) -> list[ErrorLog | SessionLog]:
        logs: list[ErrorLog | SessionLog] = [self.main_log]
        candidates: list[ErrorLog | SessionLog] = [*self.server_logs.values(), *self.session_logs.values()]
        for log in candidates:
            if all(log is not seen for seen in logs):
                logs.append(log)
        return logs

    def log_files(self) -> list[str]:
        return sorted({str(path) for log in self._all_logs() for path in log.files})

    def reopen_logs(self, owner: tuple[int, int] | None = None) -> list[str]:
        """USR1: reopen every log file (given to `owner` when set); returns nginx's messages for failures."""
        failures: list[str] = []
        for log in self._all_logs():
            if isinstance(log, ErrorLog):
                failed = log.reopen(owner)
            else:
                try:
                    log.reopen(owner)
                    failed = []
                except OSError as error:
                    failed = [(log.files[0], error)]
            failures += [f'open() "{path}" failed ({e.errno}: {e.strerror})' for path, e in failed]
        return failures

    def close_logs(self) -> None:
        for log in self._all_logs():
            log.close()

    def close_listeners(self, keep: list[tuple[ListenerPlan, socket.socket]] | None = None) -> None:
        """Close this generation's sockets, except those `keep` (the next generation) uses again."""
        kept = {id(sock) for _, sock in keep or ()}
        for plan, sock in self.listeners:
            if id(sock) not in kept:
                close_listener(sock, plan.listen)

    def close(self) -> None:
        self.close_listeners()
        self.close_logs()


def build_tls(config: Config) -> dict[int, ServerTls]:
    """An SSL context for every server that needs one (raises ConfigError, as `-t` reports it)."""
    prefix = config.conf_file.parent  # relative ssl_conf_command files resolve against the config's directory
    return {
        id(server): build_server_context(server, prefix=prefix)
        for server in servers_of(config)
        if server.needs_tls
    }


def prepare(config: Config, previous: Generation | None = None) -> Generation:
    """Build TLS contexts, open every log and bind every listening socket (raises StartupError).

    With `previous`, sockets for addresses that stay are taken over from it rather than bound again; on
    failure nothing of `previous` is touched.
    """
    try:
        tls = build_tls(config)
    except ConfigError as error:
        raise StartupError(str(error)) from None
    main_log, server_logs, session_logs = _open_logs(config)
    inherited = {listener_key(plan.listen): sock for plan, sock in previous.listeners} if previous else {}
    try:
        listeners = open_listeners(plan_listeners(servers_of(config)), inherited)
    except ListenError as error:
        generation = Generation(config, tls, [], main_log, server_logs, session_logs)
        generation.close_logs()
        raise StartupError(str(error)) from None
    return Generation(config, tls, listeners, main_log, server_logs, session_logs)


def _open_logs(config: Config) -> tuple[ErrorLog, dict[int, ErrorLog], dict[int, SessionLog]]:
    opened: list[ErrorLog | SessionLog] = []
    error_logs: dict[tuple[ErrorLogTarget, ...], ErrorLog] = {}
    session_logs: dict[SessionLogTarget, SessionLog] = {}

    def open_log(log: ErrorLog | SessionLog) -> None:
        try:
            log.open()
        except OSError as error:
            log.close()
            for done in opened:
                done.close()
            raise StartupError(
                f'open() "{error.filename}" failed ({error.errno}: {error.strerror})'
            ) from None
        opened.append(log)

    main_log = ErrorLog(config.main.error_logs)
    open_log(main_log)
    by_server: dict[int, ErrorLog] = {}
    session_by_server: dict[int, SessionLog] = {}
    for server in servers_of(config):
        targets = server.core.error_logs
        if targets:
            log = error_logs.get(targets)
            if log is None:
                log = error_logs[targets] = ErrorLog(targets)
                open_log(log)
            by_server[id(server)] = log
        session_target = server.core.session_log
        if session_target is not None:
            session_log = session_logs.get(session_target)
            if session_log is None:
                session_log = session_logs[session_target] = SessionLog(session_target)
                open_log(session_log)
            session_by_server[id(server)] = session_log
    return main_log, by_server, session_by_server
