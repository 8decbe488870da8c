"""A backend that accepts any proxy login and then echoes, so "authentication reached" is visible to a client.

Line-oriented and stateless per line: it answers the commands a mail proxy sends while logging in (IMAP
LOGIN with synchronizing literals; POP3 USER/PASS; SMTP EHLO/HELO/XCLIENT/AUTH/MAIL/RCPT) and echoes every
other line unchanged, so a client's commands pipelined behind its authenticating command come back to it.
Everything each connection received is recorded.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from types import TracebackType
from typing import Self

from tests.support.loopback import IPV4_LOOPBACK

GREETINGS = {
    "imap": b"* OK backend ready\r\n",
    "pop3": b"+OK backend ready\r\n",
    "smtp": b"220 backend.example.net ESMTP\r\n",
}
_LITERAL = re.compile(rb"\{(\d+)\}\r?\n$")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: LoginBackend) -> None:
        self.owner = owner
        super().__init__((IPV4_LOOPBACK, 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.owner._serve(self.request)


class LoginBackend:
    """Serves ``protocol`` ("imap", "pop3" or "smtp") on 127.0.0.1 and a free port."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self._server = _Server(self)
        self.port: int = self._server.server_address[1]
        self._lock = threading.Lock()
        self._received: list[bytes] = []
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def received(self) -> list[bytes]:
        """What each connection received so far, in order of connection."""
        with self._lock:
            return list(self._received)

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(30)
        with self._lock:
            index = len(self._received)
            self._received.append(b"")
        reader = connection.makefile("rb")
        try:
            connection.sendall(GREETINGS[self.protocol])
            while True:
                command = reader.readline()
                if not command:
                    return
                # An IMAP command goes on after each synchronizing literal.
                while self.protocol == "imap" and (literal := _LITERAL.search(command)):
                    connection.sendall(b"+ OK\r\n")
                    command += reader.read(int(literal[1]))
                    command += reader.readline()
                with self._lock:
                    self._received[index] += command
                connection.sendall(self._answer(command))
        except OSError:
            return
        finally:
            reader.close()
            connection.close()

    def _answer(self, command: bytes) -> bytes:
        words = command.split(None, 2)
        verb = words[0].upper() if words else b""
        if self.protocol == "imap":
            if len(words) > 1 and words[1].upper() == b"LOGIN":
                return words[0] + b" OK backend logged in\r\n"
        elif self.protocol == "pop3":
            if verb == b"USER":
                return b"+OK\r\n"
            if verb == b"PASS":
                return b"+OK backend logged in\r\n"
        elif verb in (b"EHLO", b"HELO"):
            return b"250 backend.example.net\r\n"
        elif verb == b"XCLIENT":
            return GREETINGS["smtp"]
        elif verb == b"AUTH":
            return b"235 2.7.0 backend authenticated\r\n"
        elif verb == b"MAIL":
            return b"250 2.1.0 backend sender ok\r\n"
        elif verb == b"RCPT":
            return b"250 2.1.5 backend recipient ok\r\n"
        return command
