"""Helpers for the process tests: a prefix workers can reach after dropping privileges, the processes of a
running master, waiting for log lines, and IMAP clients that keep a relay busy."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.oracle.backend import LoginBackend
from tests.support.authserver import AuthServer
from tests.support.loopback import IPV4_LOOPBACK


@pytest.fixture
def open_prefix() -> Iterator[Path]:
    """A temporary prefix every user can traverse: workers run as nobody and reopen their logs there."""
    directory = Path(tempfile.mkdtemp(prefix="mailgate-process-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def imap_backend() -> Iterator[LoginBackend]:
    """An IMAP backend that accepts any login and then echoes every line."""
    with LoginBackend("imap") as backend:
        yield backend


@pytest.fixture
def routed_auth(imap_backend: LoginBackend) -> Iterator[AuthServer]:
    """An auth server that sends every IMAP login to `imap_backend`."""
    with AuthServer() as auth:
        auth.route("imap", IPV4_LOOPBACK, imap_backend.port)
        yield auth


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections and that nothing else can take meanwhile (bound, never
    listening), unlike a port that was merely free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((IPV4_LOOPBACK, 0))
        yield holder.getsockname()[1]


def children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def workers(master: int, count: int, timeout: float = 20.0) -> list[int]:
    """The master's serving workers, once there are `count` of them (it forks them after the pid file)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for pid in children(master):
            try:
                if title(pid) == "mailgate: worker process":
                    found.append(pid)
            except OSError:
                continue
        if len(found) == count:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"master {master} has workers {found}, not {count}")
        time.sleep(0.02)


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def log_count(path: Path, pattern: str) -> int:
    try:
        text = path.read_text(errors="backslashreplace")
    except FileNotFoundError:
        return 0
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def wait_for_log(path: Path, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
    """Wait until `pattern` (a regular expression) matches at least `count` times in the file."""
    deadline = time.monotonic() + timeout
    while log_count(path, pattern) < count:
        if time.monotonic() > deadline:
            text = path.read_text(errors="backslashreplace") if path.exists() else "(no file)"
            shown = "\n".join(line for line in text.splitlines() if " connected to " not in line)
            pytest.fail(f"{pattern!r} x{count} not in {path} within {timeout}s:\n{shown[-6000:]}")
        time.sleep(0.05)


class ImapClient:
    """One IMAP client session, line by line."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((IPV4_LOOPBACK, port), timeout=timeout)
        self._buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unanswered: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def command(self, data: bytes) -> list[bytes]:
        """Send one tagged command; the lines up to its tagged reply."""
        tag = data.split(b" ", 1)[0]
        self.sock.sendall(data)
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines

    def capability(self) -> bytes:
        return self.command(b"c CAPABILITY\r\n")[0]

    def login(self, user: str = "alice", password: str = "secret") -> None:
        reply = self.command(f"a LOGIN {user} {password}\r\n".encode())[-1]
        assert reply.startswith(b"a OK"), reply

    def closed_by_server(self) -> bool:
        """Read until the server closes (True) or the socket times out (False)."""
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@dataclass
class RelayLoad:
    """A logged-in session that keeps the relay busy with random lines the echo backend returns; `sent` and
    `received` digests must be equal at the end (nothing lost, nothing corrupted)."""

    client: ImapClient
    capability: bytes
    sent: hashlib._Hash = field(default_factory=hashlib.sha256)
    received: hashlib._Hash = field(default_factory=hashlib.sha256)
    round_trips: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def start(cls, port: int) -> RelayLoad:
        client = ImapClient(port)
        client.line()
        load = cls(client, client.capability())
        client.login()
        load._thread = threading.Thread(target=load._run, daemon=True)
        load._thread.start()
        return load

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                line = b"x " + secrets.token_hex(secrets.randbelow(2000) + 1).encode() + b"\r\n"
                self.client.sock.sendall(line)
                self.sent.update(line)
                self.received.update(self.client.line())
                self.round_trips += 1
        except BaseException as error:  # reported by stop()
            self.error = error

    def wait_round_trips(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        target = self.round_trips + count
        while self.round_trips < target and self.error is None:
            assert time.monotonic() < deadline, "the relay stalled"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)


@dataclass
class ConnectLoad:
    """New sessions, one after another, until stopped: each connects, reads the greeting and CAPABILITY and
    logs out. Refused connections and failed sessions are counted apart."""

    port: int
    capabilities: list[bytes] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)
    refused: list[BaseException] = field(default_factory=list)
    failed: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ConnectLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client = ImapClient(self.port)
            except OSError as error:
                self.refused.append(error)
                continue
            try:
                self.client_ports.append(client.sock.getsockname()[1])
                client.line()
                self.capabilities.append(client.capability())
                client.command(b"z LOGOUT\r\n")
            except (OSError, EOFError) as error:
                self.failed.append(error)
            finally:
                client.close()

    def wait_sessions(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        target = len(self.capabilities) + count
        while len(self.capabilities) < target:
            assert time.monotonic() < deadline, "no new sessions are served"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
