"""Debian's nginx with its mail module as an oracle: `nginx -t` verdicts and a foreground server.

Every helper skips the calling test (with the reason) when nginx or its mail module is not installed;
`scripts/test` installs both. The mail module is loaded through `-g` rather than by editing the
configuration, so file names and line numbers in nginx's messages are those of the caller's files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

NGINX_BINARY = Path("/usr/sbin/nginx")
MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
LOAD_MAIL_MODULE = f"load_module {MAIL_MODULE};"

# Debian builds nginx with `--error-log-path=stderr`, so log lines reach stderr in the log file format.
_LOG_FILE_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?P<level>[a-z]+)\] \d+#\d+: (?P<text>.*)$")

# Generous: two CPU cores are shared by the whole parallel suite.
_COMMAND_TIMEOUT = 60.0


def require_nginx() -> Path:
    """The nginx binary; skips the calling test when nginx or its mail module is missing."""
    if not NGINX_BINARY.is_file():
        pytest.skip(f"Debian's nginx is not installed ({NGINX_BINARY} missing; scripts/test installs it)")
    if not MAIL_MODULE.is_file():
        pytest.skip(
            f"nginx's mail module is not installed ({MAIL_MODULE} missing: apt-get install libnginx-mod-mail)"
        )
    return NGINX_BINARY


def normalize_nginx_line(line: str) -> str:
    """nginx's stderr line in the `nginx: [level] text` shape whichever way this build printed it."""
    match = _LOG_FILE_LINE.match(line)
    if match is None:
        return line
    return f"nginx: [{match['level']}] {match['text']}"


def _global_directives(conf_file: Path, directives: str | None) -> str:
    """`-g` text: the mail module's load_module when the configuration lacks it, then the caller's."""
    try:
        loads_mail_module = str(MAIL_MODULE) in conf_file.read_text(encoding="latin-1")
    except OSError:
        loads_mail_module = False
    parts = [] if loads_mail_module else [LOAD_MAIL_MODULE]
    if directives:
        parts.append(directives)
    return " ".join(parts)


@dataclass(frozen=True)
class NginxRun:
    """What one nginx command did: exit code, stdout (the `-T` dump) and stderr lines as printed."""

    returncode: int
    stdout: str
    stderr_lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def lines(self) -> list[str]:
        """stderr lines normalized to `nginx: [level] text` (see `normalize_nginx_line`)."""
        return [normalize_nginx_line(line) for line in self.stderr_lines]


def run_nginx(
    flags: Sequence[str], conf_file: Path, prefix: Path, *, directives: str | None = None
) -> NginxRun:
    """Run `nginx FLAGS -p PREFIX/ -c CONF_FILE -g DIRECTIVES` to completion (`-t`, `-T`, `-s reload`...).

    The mail module is added to `-g` unless the configuration loads it.
    """
    nginx = require_nginx()
    argv = [str(nginx), *flags, "-p", f"{prefix}/", "-c", str(conf_file)]
    global_directives = _global_directives(conf_file, directives)
    if global_directives:
        argv += ["-g", global_directives]
    completed = subprocess.run(
        argv, capture_output=True, timeout=_COMMAND_TIMEOUT, check=False, stdin=subprocess.DEVNULL
    )
    stderr = completed.stderr.decode("utf-8", errors="backslashreplace")
    return NginxRun(
        returncode=completed.returncode,
        stdout=completed.stdout.decode("utf-8", errors="backslashreplace"),
        stderr_lines=tuple(stderr.splitlines()),
    )


def nginx_test(
    conf_file: Path,
    prefix: Path,
    *,
    directives: str | None = None,
    dump: bool = False,
    quiet: bool = False,
) -> NginxRun:
    """Run `nginx -t` (`-T` with dump, `-tq` / `-Tq` with quiet) on `conf_file`.

    nginx does not bind ports in test mode, but it does create the pid file and open (and create) the
    log files the configuration names, so `prefix` should be a temporary directory.
    """
    flags = ("-T" if dump else "-t") + ("q" if quiet else "")
    return run_nginx([flags], conf_file, prefix, directives=directives)


# A listening address: (IP literal, port) for TCP, or the path of a UNIX socket.
ListenAddress = tuple[str, int] | str


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _listening_tcp_sockets() -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, port) of sockets in the LISTEN state, from /proc: no connection that nginx would log."""
    sockets: set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":
                address, port = fields[1].split(":")
                sockets.add((_proc_address(address), int(port, 16)))
    return sockets


def _is_listening(address: ListenAddress) -> bool:
    if isinstance(address, str):
        return Path(address).is_socket()
    host, port = address
    return (ipaddress.ip_address(host), port) in _listening_tcp_sockets()


@dataclass
class RunningNginx:
    """A foreground nginx started by `nginx_server`."""

    process: subprocess.Popen[bytes]
    prefix: Path
    error_log: Path
    pid_file: Path

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(encoding="utf-8", errors="backslashreplace")
        except FileNotFoundError:
            return ""


@contextmanager
def nginx_server(
    conf_file: Path,
    prefix: Path,
    listening: Sequence[ListenAddress],
    *,
    directives: str | None = None,
    start_timeout: float = 20.0,
) -> Iterator[RunningNginx]:
    """Run nginx in the foreground (no daemon, no master process) until the block ends.

    Waits until every address in `listening` (IP literals, as in the listen directives) is listening.
    The configuration must not set `daemon`, `master_process` or `pid` (they are given with `-g`);
    nginx logs at `info` to `prefix/nginx-error.log` (`RunningNginx.error_log`). Startup failure fails
    the test with that log.
    """
    nginx = require_nginx()
    error_log = prefix / "nginx-error.log"
    pid_file = prefix / "nginx.pid"
    server_directives = f"daemon off; master_process off; pid {pid_file}; error_log {error_log} info;"
    if directives:
        server_directives += " " + directives
    argv = [
        str(nginx),
        "-p",
        f"{prefix}/",
        "-c",
        str(conf_file),
        "-e",
        str(error_log),
        "-g",
        _global_directives(conf_file, server_directives),
    ]
    # A file, not a pipe: nobody reads stderr while the test runs, and a full pipe would block nginx.
    with (prefix / "nginx-stderr.log").open("wb") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    running = RunningNginx(process=process, prefix=prefix, error_log=error_log, pid_file=pid_file)
    try:
        deadline = time.monotonic() + start_timeout
        while not all(_is_listening(address) for address in listening):
            if process.poll() is not None:
                startup_output = (prefix / "nginx-stderr.log").read_text(errors="backslashreplace")
                pytest.fail(
                    f"nginx exited with {process.returncode} before listening on {list(listening)}:\n"
                    f"{startup_output}{running.error_log_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"nginx did not listen on {list(listening)} within {start_timeout}s:\n"
                    f"{running.error_log_text()}"
                )
            time.sleep(0.02)
        yield running
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (nginx's fast shutdown: open sessions are cut); SIGKILL if it does not exit in time."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_COMMAND_TIMEOUT / 6)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
