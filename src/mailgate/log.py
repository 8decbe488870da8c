"""error_log, written as nginx writes it.

A line is `YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message[ while ACTION][, client: ...]`.
Targets are files (append, one write per line so concurrent workers never interleave), `stderr`, and
`syslog:` (RFC 3164 over UDP or a UNIX datagram socket). Each target has its own minimum level.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from mailgate.config.model import ErrorLogTarget, LogLevel, SyslogTarget

_SYSLOG_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "intern": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "clock": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "cron": 15,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}


@dataclass(frozen=True)
class LogContext:
    """The `, client: ..., server: ...` suffix nginx's mail module appends to a session's messages."""

    client: str
    server: str
    starttls: bool = False
    login: str | None = None
    upstream: str | None = None

    def render(self) -> str:
        text = f", client: {self.client}"
        if self.starttls:
            text += " using starttls"
        text += f", server: {self.server}"
        if self.login is not None:
            text += f', login: "{self.login}"'
        if self.upstream is not None:
            text += f", upstream: {self.upstream}"
        return text


class _Sink:
    def __init__(self, target: ErrorLogTarget) -> None:
        self.target = target
        self.threshold = target.level.severity
        self._fd: int | None = None
        self._syslog: socket.socket | None = None
        self._syslog_address: str | tuple[str, int] | None = None

    def open(self) -> None:
        target = self.target
        if target.stderr:
            self._fd = 2
        elif target.syslog is not None:
            self._open_syslog(target.syslog)
        elif target.path is not None:
            self._fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _open_syslog(self, syslog: SyslogTarget) -> None:
        if syslog.server_path is not None:
            self._syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._syslog_address = syslog.server_path
        else:
            family = socket.AF_INET6 if ":" in syslog.server_host else socket.AF_INET
            self._syslog = socket.socket(family, socket.SOCK_DGRAM)
            self._syslog_address = (syslog.server_host, syslog.server_port)
        self._syslog.setblocking(False)

    def reopen(self) -> None:
        """USR1: files are opened anew (after rotation); stderr and syslog are left as they are."""
        if self.target.path is None or self.target.stderr or self.target.syslog is not None:
            return
        old = self._fd
        self.open()
        if old is not None and old > 2:
            os.close(old)

    def close(self) -> None:
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._fd = None
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None

    def emit(self, level: LogLevel, stamp: str, body: str) -> None:
        try:
            if self._syslog is not None and self.target.syslog is not None:
                self._emit_syslog(self.target.syslog, level, body)
            elif self._fd is not None:
                os.write(self._fd, f"{stamp} {body}\n".encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # a full disk or a vanished syslog daemon must never break a session

    def _emit_syslog(self, syslog: SyslogTarget, level: LogLevel, body: str) -> None:
        assert self._syslog is not None and self._syslog_address is not None
        severity = (syslog.severity or level).severity
        priority = _SYSLOG_FACILITIES.get(syslog.facility, 23) * 8 + severity
        stamp = time.strftime("%b %e %H:%M:%S")
        host = "" if syslog.nohostname else f"{socket.gethostname()} "
        line = f"<{priority}>{stamp} {host}{syslog.tag}: {body}"
        self._syslog.sendto(line.encode("utf-8", "backslashreplace"), self._syslog_address)


class ErrorLog:
    """A set of error_log targets; `log()` writes one line to every target whose level admits it."""

    def __init__(self, targets: Iterable[ErrorLogTarget]) -> None:
        self._sinks = [_Sink(target) for target in targets]
        self._threshold = max((sink.threshold for sink in self._sinks), default=-1)
        self._opened = False

    def open(self) -> None:
        if not self._opened:
            for sink in self._sinks:
                sink.open()
            self._opened = True

    def reopen(self) -> None:
        for sink in self._sinks:
            sink.reopen()

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
        self._opened = False

    def enabled(self, level: LogLevel) -> bool:
        return level.severity <= self._threshold

    def log(
        self,
        level: LogLevel,
        message: str,
        *,
        connection: int | None = None,
        action: str | None = None,
        context: LogContext | None = None,
    ) -> None:
        severity = level.severity
        if severity > self._threshold:
            return
        body = f"[{level.value}] {os.getpid()}#{threading.get_native_id()}: "
        if connection is not None:
            body += f"*{connection} "
        body += message
        if action:
            body += f" while {action}"
        if context is not None:
            body += context.render()
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        for sink in self._sinks:
            if severity <= sink.threshold:
                sink.emit(level, stamp, body)


# Where messages go before the configuration names a log, and with `-e stderr`.
STDERR_TARGET = ErrorLogTarget(path=None, level=LogLevel.NOTICE, stderr=True)
