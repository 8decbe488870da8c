"""Run mailgate as an operator would: the console script, a configuration file, `-g` for the rest.

`mailgate_server` starts it in the foreground on a configuration and waits for the pid file, which mailgate
writes only once every listening socket is bound, so the caller can connect at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

MAILGATE = Path(sys.executable).with_name("mailgate")


@dataclass
class RunningMailgate:
    process: subprocess.Popen[bytes]
    prefix: Path
    conf_file: Path
    error_log: Path
    pid_file: Path

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(encoding="utf-8", errors="backslashreplace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)


def mailgate_command(prefix: Path, conf_file: Path, *args: str) -> list[str]:
    return [str(MAILGATE), "-p", f"{prefix}/", "-c", str(conf_file), *args]


@contextmanager
def mailgate_server(
    conf_text: str,
    prefix: Path,
    *,
    directives: str = "",
    master_process: bool = False,
    start_timeout: float = 20.0,
    log_level: str = "info",
) -> Iterator[RunningMailgate]:
    """Run mailgate in the foreground (`daemon off`) on `conf_text` until the block ends (then TERM)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf_file = prefix / "mailgate.conf"
    conf_file.write_text(conf_text)
    error_log = prefix / "error.log"
    pid_file = prefix / "mailgate.pid"
    master = "on" if master_process else "off"
    given = f"daemon off; master_process {master}; pid {pid_file}; error_log {error_log} {log_level};"
    given += directives
    argv = mailgate_command(prefix, conf_file, "-g", given)
    with (prefix / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    running = RunningMailgate(process, prefix, conf_file, error_log, pid_file)
    try:
        deadline = time.monotonic() + start_timeout
        while not pid_file.exists():
            if process.poll() is not None:
                output = (prefix / "stderr.log").read_text(errors="backslashreplace")
                pytest.fail(f"mailgate exited with {process.returncode}:\n{output}{running.error_log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mailgate wrote no pid file within {start_timeout}s:\n{running.error_log_text()}"
                )
            time.sleep(0.01)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
