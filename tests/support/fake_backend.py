"""A scripted mail backend for failure-path tests: each connection runs a script of sends and expects.

Real backends (Dovecot, Postfix) cover the happy paths; this one misbehaves on purpose: refuses, closes
mid-login, closes mid-relay, answers garbage. A script is a list of steps run in order per connection:
``Send(b"...")``, ``Expect(b"...")`` (read until the bytes were received), ``Close()``, ``Echo()`` (echo
everything until EOF). What each connection received is recorded.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Expect:
    data: bytes


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Echo:
    pass


Step = Send | Expect | Close | Echo

# An IMAP backend that lets alice log in with `secret` (as a proxy sends LOGIN, with literals), then echoes.
IMAP_LOGIN_THEN_ECHO: tuple[Step, ...] = tuple(
    [
        Send(b"* OK backend ready\r\n"),
        Expect(b"a1 LOGIN {5}\r\n"),
        Send(b"+ OK\r\n"),
        Expect(b"alice {6}\r\n"),
        Send(b"+ OK\r\n"),
        Expect(b"secret\r\n"),
        Send(b"a1 OK backend logged in\r\n"),
        Echo(),
    ]
)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: FakeBackend) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.owner._run(self.request)


class FakeBackend:
    """Runs `script` for every connection on 127.0.0.1 and a free port."""

    def __init__(self, script: Sequence[Step]) -> None:
        self.script = list(script)
        self._server = _Server(self)
        self.port: int = self._server.server_address[1]
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _run(self, connection: socket.socket) -> None:
        connection.settimeout(30)
        received = b""  # not yet matched by an Expect
        everything = b""
        index = len(self.received)
        with self._lock:
            self.received.append(b"")
        try:
            for step in self.script:
                if isinstance(step, Send):
                    connection.sendall(step.data)
                elif isinstance(step, Expect):
                    while step.data not in received:
                        chunk = connection.recv(65536)
                        if not chunk:
                            return
                        received += chunk
                        everything += chunk
                        self.received[index] = everything
                    received = received[received.index(step.data) + len(step.data) :]
                elif isinstance(step, Close):
                    return
                else:
                    while chunk := connection.recv(65536):
                        connection.sendall(chunk)
        except OSError:
            return
        finally:
            connection.close()
