"""Starting the servers under test and reading their cost from the kernel's per-process accounting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (which may contain spaces), numbered from 3 (state)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """`root` and every process below it (an nginx or mailgate master and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime) of the processes, in seconds (their own time: workers are counted while they live)."""
    user = system = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        user += int(fields[11])  # utime and stime are stat fields 14 and 15
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def pss_kib(pids: Sequence[int]) -> int:
    """Proportional set size of the processes: shared pages are split between them, so the sum is fair."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def wait_listening(ports: Sequence[int], process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(ports)
    while pending:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} is not listening on {pending} after {START_TIMEOUT}s:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    """A running server under test: its master process and the ports of its listeners."""

    name: str
    process: subprocess.Popen[bytes]
    base_port: int
    prefix: Path
    argv: list[str]
    ports: Sequence[int]

    @staticmethod
    def start(name: str, argv: list[str], prefix: Path, base_port: int, ports: Sequence[int]) -> Server:
        """Start `argv` (a foreground master) and wait until every port listens."""
        log = prefix / "stderr.log"
        with log.open("ab") as stderr:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            wait_listening(ports, process, name, log)
        except BenchError:
            stop(process)
            raise
        return Server(name, process, base_port, prefix, argv, ports)

    def restart(self) -> None:
        """A fresh server: memory measurements start from a process that never held the connections."""
        stop(self.process)
        self.process = Server.start(self.name, self.argv, self.prefix, self.base_port, self.ports).process

    @property
    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    @property
    def worker_pids(self) -> list[int]:
        """The processes that serve connections (the master itself when it has no workers)."""
        pids = self.pids
        return pids[1:] or pids

    def wait_processes(self, expected: int, timeout: float = 10.0) -> int:
        """How many processes the server runs, once `expected` exist (workers fork after the ports listen)."""
        deadline = time.monotonic() + timeout
        while len(self.pids) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.pids)

    def cpu_seconds(self) -> tuple[float, float]:
        return cpu_seconds(self.pids)

    def pss_kib(self) -> int:
        return pss_kib(self.pids)

    def log_tail(self) -> str:
        return f"{_tail(self.prefix / 'error.log', 10)}\n{_tail(self.prefix / 'stderr.log', 10)}"


@contextmanager
def run_server(
    name: str, argv: list[str], prefix: Path, base_port: int, ports: Sequence[int]
) -> Iterator[Server]:
    """A started server (see `Server.start`), stopped at the end of the block."""
    server = Server.start(name, argv, prefix, base_port, ports)
    try:
        yield server
    finally:
        stop(server.process)


def server_argv(name: str, binary: str, prefix: Path, conf: Path) -> list[str]:
    """The nginx command line, identical for both: foreground master with its workers, logs in the prefix."""
    given = f"daemon off; master_process on; pid {prefix}/{name}.pid; error_log {prefix}/error.log error;"
    return [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", f"{prefix}/error.log", "-g", given]


@contextmanager
def run_responder(binary: Path, args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(binary), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise BenchError(f"the responder did not start:\n{_tail(log)}")
        yield process
    finally:
        stop(process)
