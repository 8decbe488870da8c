"""error_log, written as nginx writes it, and mailgate's session log.

An error_log line is `YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message[ while ACTION][, client: ...]`.
Targets are files (append, one write per line so concurrent workers never interleave), `stderr`, and
`syslog:` (RFC 3164 over UDP or a UNIX datagram socket, the whole line after nginx's syslog header). Each
target has its own minimum level.

The session log (`session_log`, a mailgate extension) gets one line per session when it ends: plain
`key=value` text by default, or one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from mailgate.config.model import ErrorLogTarget, LogLevel, SessionLogTarget, SyslogTarget

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


def _timestamp() -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S")


class _Sink:
    """One destination: a file, stderr, or a syslog server."""

    def __init__(self, path: os.PathLike[str] | None, stderr: bool, syslog: SyslogTarget | None) -> None:
        self.path = path
        self.stderr = stderr
        self.syslog = syslog
        self._fd: int | None = None
        self._syslog_socket: socket.socket | None = None
        self._syslog_address: str | tuple[str, int] | None = None
        self._syslog_host = ""

    @property
    def is_file(self) -> bool:
        return self.path is not None and not self.stderr and self.syslog is None

    @property
    def fd(self) -> int | None:
        """The file descriptor written to (files and stderr), None for syslog or before `open()`."""
        return self._fd

    def open(self) -> None:
        if self.stderr:
            self._fd = 2
        elif self.syslog is not None:
            self._open_syslog(self.syslog)
        elif self.path is not None:
            self._fd = _open_append(self.path)

    def _open_syslog(self, syslog: SyslogTarget) -> None:
        if syslog.server_path is not None:
            self._syslog_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._syslog_address = syslog.server_path
        else:
            family = socket.AF_INET6 if ":" in syslog.server_host else socket.AF_INET
            self._syslog_socket = socket.socket(family, socket.SOCK_DGRAM)
            self._syslog_address = (syslog.server_host, syslog.server_port)
        self._syslog_socket.setblocking(False)
        self._syslog_host = "" if syslog.nohostname else socket.gethostname()

    def reopen(self, owner: tuple[int, int] | None = None) -> None:
        """USR1: a file is opened anew (after rotation), `owner` (uid, gid) given it so that workers running
        as that user can open it too; stderr and syslog are left as they are. Raises OSError."""
        if not self.is_file or self.path is None:
            return
        fd = _open_append(self.path)
        if owner is not None:
            try:
                os.fchown(fd, owner[0], owner[1])
            except OSError:
                os.close(fd)
                raise
        old, self._fd = self._fd, fd
        if old is not None and old > 2:
            os.close(old)

    def close(self) -> None:
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._fd = None
        if self._syslog_socket is not None:
            self._syslog_socket.close()
            self._syslog_socket = None

    def write(self, line: str, severity: int) -> None:
        """Write one line (without its newline); `severity` is the syslog severity (0-7)."""
        try:
            if self._syslog_socket is not None and self.syslog is not None:
                self._send_syslog(self.syslog, line, severity)
            elif self._fd is not None:
                os.write(self._fd, _encode(line) + b"\n")
        except OSError:
            pass  # a full disk or a vanished syslog daemon must never break a session

    def _send_syslog(self, syslog: SyslogTarget, line: str, severity: int) -> None:
        assert self._syslog_socket is not None and self._syslog_address is not None
        priority = _SYSLOG_FACILITIES.get(syslog.facility, 23) * 8 + severity
        stamp = time.strftime("%b %e %H:%M:%S")
        host = f"{self._syslog_host} " if self._syslog_host else ""
        header = f"<{priority}>{stamp} {host}{syslog.tag}: "
        self._syslog_socket.sendto(_encode(header) + _encode(line), self._syslog_address)


# nginx builds a line in a 2048-byte buffer (NGX_MAX_ERROR_STR), its line feed included: longer lines are cut.
MAX_LINE_BYTES = 2047


def _encode(line: str) -> bytes:
    return line.encode("utf-8", "backslashreplace")[:MAX_LINE_BYTES]


def _open_append(path: os.PathLike[str]) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


class ErrorLog:
    """A set of error_log targets; `log()` writes one line to every target whose level admits it."""

    def __init__(self, targets: Iterable[ErrorLogTarget]) -> None:
        self.targets = tuple(targets)
        self._sinks = [(_Sink(target.path, target.stderr, target.syslog), target) for target in self.targets]
        self._threshold = max((target.level.severity for target in self.targets), default=-1)
        self._opened = False

    @property
    def uses_stderr(self) -> bool:
        return any(target.stderr for target in self.targets)

    @property
    def files(self) -> list[os.PathLike[str]]:
        return [sink.path for sink, _ in self._sinks if sink.is_file and sink.path is not None]

    def open(self) -> None:
        """Open every target (raises OSError naming the file that cannot be opened)."""
        if not self._opened:
            for sink, _ in self._sinks:
                sink.open()
            self._opened = True

    def reopen(self, owner: tuple[int, int] | None = None) -> list[tuple[os.PathLike[str], OSError]]:
        """Reopen every file (USR1); returns the files that could not be reopened (they keep the old one)."""
        failed: list[tuple[os.PathLike[str], OSError]] = []
        for sink, _ in self._sinks:
            try:
                sink.reopen(owner)
            except OSError as error:
                assert sink.path is not None
                failed.append((sink.path, error))
        return failed

    def close(self) -> None:
        for sink, _ in self._sinks:
            sink.close()
        self._opened = False

    def first_file_fd(self) -> int | None:
        """The descriptor of the first file target (where nginx points stderr), None without one."""
        return next((sink.fd for sink, _ in self._sinks if sink.is_file and sink.fd is not None), None)

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
        line = f"{_timestamp()} [{level.value}] {os.getpid()}#{threading.get_native_id()}: "
        if connection is not None:
            line += f"*{connection} "
        line += message
        if action:
            line += f" while {action}"
        if context is not None:
            line += context.render()
        for sink, target in self._sinks:
            if severity <= target.level.severity:
                sink.write(line, (target.syslog.severity or level).severity if target.syslog else severity)


# Where messages go before the configuration names a log, and with `-e stderr`.
STDERR_TARGET = ErrorLogTarget(path=None, level=LogLevel.NOTICE, stderr=True)


# ---------------------------------------------------------------------------------------------------------
# Python loggers (the TLS layer logs through `logging`)

_PYTHON_LEVELS = (
    (logging.CRITICAL, LogLevel.CRIT),
    (logging.ERROR, LogLevel.ERROR),
    (logging.WARNING, LogLevel.WARN),
    (logging.INFO, LogLevel.INFO),
)


class ErrorLogHandler(logging.Handler):
    """Sends a Python logger's records to an error log (the one set last with `route_to`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.error_log: ErrorLog | None = None

    def emit(self, record: logging.LogRecord) -> None:
        error_log = self.error_log
        if error_log is None:
            return
        level = next((ours for python, ours in _PYTHON_LEVELS if record.levelno >= python), LogLevel.DEBUG)
        if error_log.enabled(level):
            error_log.log(level, record.getMessage())


_python_handler = ErrorLogHandler()


def route_python_logger(name: str, error_log: ErrorLog) -> None:
    """From now on, what the Python logger `name` logs goes to `error_log`, and nowhere else."""
    logger = logging.getLogger(name)
    if _python_handler not in logger.handlers:
        logger.addHandler(_python_handler)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
    _python_handler.error_log = error_log


# ---------------------------------------------------------------------------------------------------------
# Session log


@dataclass(frozen=True)
class SessionLogEntry:
    """What the session log says about one finished session. Never holds a password."""

    connection: int
    client: str  # address:port of the client (after realip)
    server: str  # the listen address, as nginx prints it
    protocol: str  # imap, pop3, smtp
    tls: str  # "none", "implicit" (listen ... ssl) or "starttls"
    tls_protocol: str | None  # TLSv1.2, TLSv1.3
    tls_cipher: str | None
    tls_resumed: bool | None
    login: str | None  # the last login name the client sent
    auth: str  # "none" (never tried), "ok", "rejected", "auth service error", "backend login failed", ...
    upstream: str | None  # the backend's address:port
    bytes_from_client: int  # relayed to the backend after login
    bytes_to_client: int  # relayed from the backend after login
    duration: float  # seconds from accept to close
    end: str  # why the session ended: "client closed", "backend closed", "timed out", "client quit", ...

    def as_json(self, time_text: str) -> str:
        fields: dict[str, object] = {"time": time_text}
        fields.update(vars(self))
        fields["duration"] = round(self.duration, 3)
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))

    def as_text(self, time_text: str) -> str:
        resumed = "-" if self.tls_resumed is None else ("yes" if self.tls_resumed else "no")
        parts = [
            time_text,
            f"*{self.connection}",
            f"client={self.client}",
            f"server={self.server}",
            f"protocol={self.protocol}",
            f"tls={self.tls}",
            f"tls_protocol={self.tls_protocol or '-'}",
            f"tls_cipher={self.tls_cipher or '-'}",
            f"tls_resumed={resumed}",
            f"login={_quoted(self.login)}",
            f"auth={_quoted(self.auth)}",
            f"upstream={self.upstream or '-'}",
            f"bytes_from_client={self.bytes_from_client}",
            f"bytes_to_client={self.bytes_to_client}",
            f"duration={self.duration:.3f}",
            f"end={_quoted(self.end)}",
        ]
        return " ".join(parts)


def _quoted(value: str | None) -> str:
    """`-` for nothing; a bare word as is; anything else in double quotes with `"`, `\\` and controls escaped,
    so that a login name can never forge another field or line."""
    if value is None:
        return "-"
    if value and all(char.isalnum() or char in "-_.@+" for char in value) and value != "-":
        return value
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\x{ord(char):02X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


class SessionLog:
    """One `session_log` destination; `write()` adds one line (text or JSON) per finished session."""

    def __init__(self, target: SessionLogTarget) -> None:
        self.target = target
        self._sink = _Sink(target.path, target.stderr, target.syslog)

    def open(self) -> None:
        self._sink.open()

    def reopen(self, owner: tuple[int, int] | None = None) -> None:
        self._sink.reopen(owner)

    def close(self) -> None:
        self._sink.close()

    @property
    def files(self) -> list[os.PathLike[str]]:
        return [self._sink.path] if self._sink.is_file and self._sink.path is not None else []

    def write(self, entry: SessionLogEntry) -> None:
        time_text = _timestamp()
        line = entry.as_json(time_text) if self.target.json else entry.as_text(time_text)
        self._sink.write(line, LogLevel.INFO.severity)
