"""A recording auth_http server for tests: records each request byte for byte and answers as scripted.

Point nginx (as the oracle) and mailgate at the same ``AuthServer`` and compare their ``AuthRequest``s
header by header. It speaks what nginx's auth_http client expects (spec §3.3-§3.5): one request per
connection, read up to the empty line (no body is read), answer, close.

Choosing the answer to a request, first match wins:
1. the next reply queued with ``respond_with(...)`` (each is used once, in order);
2. the default set with ``set_default(...)``;
3. ``Auth-Status: OK`` to the backend ``route(...)``d for the request's ``Auth-Protocol``;
4. an error reply naming the missing route (so a forgotten route shows up in the client's error line).
A reply is an ``AuthReply`` or a callable taking the ``AuthRequest`` and returning one.

Usable from synchronous tests: the server runs in daemon threads, one per connection, so a delayed reply
does not hold up other clients; ``stop()`` cuts delays short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import socketserver
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tests.support.loopback import IPV4_LOOPBACK

# Largest request head the server reads; nginx's requests are well under 8 KiB even with a client cert.
MAX_REQUEST_BYTES = 256 * 1024
# How long the server waits for a client to finish sending its request head.
REQUEST_READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class AuthRequest:
    """One request as received. Text is decoded as Latin-1, so every byte maps to one character."""

    raw: bytes
    peer: tuple[str, int]
    complete: bool = True  # False if the client closed (or stalled) before the empty line

    @property
    def lines(self) -> list[str]:
        """Request line and header lines, in order, without line endings and without the empty line."""
        found = []
        for line in self.raw.split(b"\n"):
            text = line.removesuffix(b"\r")
            if not text:
                break
            found.append(text.decode("latin-1"))
        return found

    @property
    def request_line(self) -> str:
        """For example ``GET /auth HTTP/1.0``."""
        return self.lines[0] if self.lines else ""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs in the order sent; the value is what follows ``": "``."""
        pairs = []
        for line in self.lines[1:]:
            name, _, value = line.partition(":")
            pairs.append((name, value.removeprefix(" ")))
        return pairs

    def header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class AuthReply:
    """What the server does with one request: ``raw`` bytes if given, else the status line and headers.

    ``delay`` seconds pass before anything is sent; ``close_without_reply`` closes after reading.
    """

    headers: tuple[tuple[str, str], ...] = ()
    status_line: str = "HTTP/1.0 200 OK"
    raw: bytes | None = field(default=None, repr=False)
    delay: float = 0.0
    close_without_reply: bool = False

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [self.status_line, *(f"{name}: {value}" for name, value in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def delayed(self, seconds: float) -> AuthReply:
        """The same reply sent after ``seconds`` (e.g. past the client's auth_http_timeout)."""
        return dataclasses.replace(self, delay=seconds)

    @classmethod
    def ok(
        cls,
        server: str,
        port: int | str,
        *,
        user: str | None = None,
        password: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
    ) -> AuthReply:
        """Success: log in to ``server:port``, optionally as ``user``/``password`` instead of the client's."""
        headers = [("Auth-Status", "OK"), ("Auth-Server", server), ("Auth-Port", str(port))]
        if user is not None:
            headers.append(("Auth-User", user))
        if password is not None:
            headers.append(("Auth-Pass", password))
        return cls(headers=(*headers, *extra))

    @classmethod
    def error(cls, text: str, *, wait: int | str | None = None, error_code: str | None = None) -> AuthReply:
        """Failure shown to the client as ``text``; optional Auth-Wait and Auth-Error-Code headers."""
        headers = [("Auth-Status", text)]
        if wait is not None:
            headers.append(("Auth-Wait", str(wait)))
        if error_code is not None:
            headers.append(("Auth-Error-Code", error_code))
        return cls(headers=tuple(headers))

    @classmethod
    def retry_later(cls, seconds: int | None) -> AuthReply:
        """``Auth-Status: WAIT``: the client asks again after ``seconds`` (no Auth-Wait header if None)."""
        headers = [("Auth-Status", "WAIT")]
        if seconds is not None:
            headers.append(("Auth-Wait", str(seconds)))
        return cls(headers=tuple(headers))

    @classmethod
    def garbage(cls, data: bytes = b"\x00\xffthis is not HTTP\r\nAuth Status: OK\r\n\r\n") -> AuthReply:
        """``data`` sent as is (default: an invalid header line), then the connection closes."""
        return cls(raw=data)

    @classmethod
    def truncated(cls) -> AuthReply:
        """A response head cut off before its empty line, then close (an early EOF for the client)."""
        return cls(raw=b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n")

    @classmethod
    def oversized(cls, server: str, port: int | str, size: int = 2048) -> AuthReply:
        """A valid success reply whose head is at least ``size`` bytes (nginx's buffer is 1024)."""
        base = cls.ok(server, port)
        padding = max(0, size - len(base.encode()) - len("X-Padding: \r\n"))
        return cls(headers=(*base.headers, ("X-Padding", "x" * padding)))

    @classmethod
    def close_early(cls) -> AuthReply:
        """Read the request, then close without a byte of reply."""
        return cls(close_without_reply=True)


Responder = Callable[[AuthRequest], AuthReply]


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True  # a fixed port may still have TIME_WAIT connections; Linux never shares it

    def __init__(self, owner: AuthServer, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.owner = owner
        super().__init__((host, port), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        self.server.owner._serve(self.request, self.client_address)


class AuthServer:
    """The recording auth_http server on ``host`` and ``port`` (0: a free one); start it with ``start()`` or
    ``with``."""

    def __init__(self, host: str = IPV4_LOOPBACK, port: int = 0) -> None:
        self._tcp = _TcpServer(self, host, port)
        self.host = host
        self.port: int = self._tcp.server_address[1]
        self._thread = threading.Thread(
            target=self._tcp.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._requests: list[AuthRequest] = []
        self._queued: deque[AuthReply | Responder] = deque()
        self._default: AuthReply | Responder | None = None
        self._routes: dict[str, tuple[str, int]] = {}

    @property
    def address(self) -> str:
        """``host:port`` as an ``auth_http`` directive takes it (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/auth") -> str:
        return f"http://{self.address}{path}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; delayed replies are abandoned. Idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._tcp.shutdown()
            self._thread.join()
        self._tcp.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def route(self, protocol: str, server: str, port: int) -> None:
        """Answer requests with ``Auth-Protocol: protocol`` with OK to ``server:port`` by default."""
        with self._changed:
            self._routes[protocol] = (server, port)

    def respond_with(self, *replies: AuthReply | Responder) -> None:
        """Queue replies for the next requests, one each, in order; then the default applies again."""
        with self._changed:
            self._queued.extend(replies)

    def set_default(self, reply: AuthReply | Responder | None) -> None:
        """Reply to use when nothing is queued (None: back to routing)."""
        with self._changed:
            self._default = reply

    @property
    def requests(self) -> list[AuthRequest]:
        """Every request received so far, in arrival order."""
        with self._changed:
            return list(self._requests)

    def wait_for_requests(self, count: int = 1, timeout: float = 10.0) -> list[AuthRequest]:
        """All requests once at least ``count`` have arrived; TimeoutError after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"auth server got {len(self._requests)} requests, expected {count}")
            return list(self._requests)

    def _choose(self, request: AuthRequest) -> AuthReply | Responder:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()
            if self._queued:
                return self._queued.popleft()
            if self._default is not None:
                return self._default
            protocol = request.header("Auth-Protocol") or ""
            if protocol in self._routes:
                return AuthReply.ok(*self._routes[protocol])
        return AuthReply.error(f"test auth server has no route for protocol {protocol!r}")

    def _serve(self, connection: socket.socket, peer: tuple[str, int]) -> None:
        raw, complete = self._read_head(connection)
        request = AuthRequest(raw=raw, peer=(peer[0], peer[1]), complete=complete)
        chosen = self._choose(request)
        reply = chosen if isinstance(chosen, AuthReply) else chosen(request)
        if reply.delay and self._stopping.wait(reply.delay):
            return
        if not reply.close_without_reply:
            with contextlib.suppress(OSError):  # the client may have given up already
                connection.sendall(reply.encode())

    def _read_head(self, connection: socket.socket) -> tuple[bytes, bool]:
        connection.settimeout(0.1)
        received = b""
        waited = 0.0
        while b"\r\n\r\n" not in received and b"\n\n" not in received and len(received) < MAX_REQUEST_BYTES:
            if self._stopping.is_set() or waited >= REQUEST_READ_TIMEOUT:
                return received, False
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                waited += 0.1
                continue
            except OSError:
                return received, False
            if not chunk:
                return received, False
            received += chunk
        return received, True
