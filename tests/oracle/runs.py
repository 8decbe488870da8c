"""Running sessions: servers started on first use and kept for the test session, and what a run observed.

A ``SessionRun`` holds the client's transcript plus what the session caused elsewhere: the auth requests
(salts normalised) and what the backend received. Runs of the same session on the same server kind are
memoised, so the nginx run a mailgate comparison needs is done once per test process.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.oracle.script import Session
from tests.oracle.targets import Pki, Target, start_target
from tests.oracle.transcript import SaltWindow, Transcript, normalise, play_normalised


@dataclass(frozen=True)
class SessionRun:
    transcript: Transcript
    auth_requests: tuple[bytes, ...]  # each request head, salts normalised
    backend_received: tuple[bytes, ...]  # per backend connection the session made

    def describe(self) -> str:
        lines = [self.transcript.describe()]
        lines += [f"  auth request: {request!r}" for request in self.auth_requests]
        lines += [f"  backend received: {received!r}" for received in self.backend_received]
        return "\n".join(lines)


class Servers:
    """nginx and mailgate per configuration group, started on first use, stopped by ``close``."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self._directory = directory
        self._pki = pki
        self._stack = ExitStack()
        self._targets: dict[tuple[str, str], Target] = {}
        self._runs: dict[tuple[str, str], SessionRun] = {}

    def close(self) -> None:
        self._stack.close()

    def target(self, kind: str, group: str) -> Target:
        """The running server (a start failure fails the test, with the server's output)."""
        key = (kind, group)
        if key not in self._targets:
            self._targets[key] = self._stack.enter_context(
                start_target(kind, group, self._directory / f"{kind}-{group}", self._pki)
            )
        return self._targets[key]

    def run(self, kind: str, session: Session) -> SessionRun:
        key = (kind, session.id)
        if key not in self._runs:
            self._runs[key] = self._play(self.target(kind, session.group), session)
        return self._runs[key]

    @staticmethod
    def _play(target: Target, session: Session) -> SessionRun:
        requests_before = len(target.auth.requests)
        backend_before = {protocol: len(backend.received) for protocol, backend in target.backends.items()}
        started = time.time()
        transcript = play_normalised(target.endpoint(session.server), session.script)
        window = SaltWindow(started, time.time())
        requests = tuple(normalise(request.raw, window) for request in target.auth.requests[requests_before:])
        received = tuple(
            data
            for protocol, backend in target.backends.items()
            for data in backend.received[backend_before[protocol] :]
        )
        return SessionRun(transcript, requests, received)
