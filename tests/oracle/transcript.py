"""Scripted client sessions: play a script against a server and record exactly what the client received.

A script is a list of steps run in order on one connection:

* ``Send(b"a LOGIN ", b"u p\\r\\n")`` writes its parts, each as its own TCP segment (TCP_NODELAY and a short
  pause between parts), so a command can arrive split; several commands in one part arrive pipelined.
  ``Send(..., together=True)`` puts the parts in one segment (under TLS: one record each, one segment).
* ``Read(until)`` reads until a condition holds: ``Lines(n)`` (n more LF-terminated lines), ``Until(b"...")``
  (up to and including the first terminator) or ``Closed()`` (the server closed the connection).
  Bytes that arrive beyond the condition stay buffered for the next ``Read``.
* ``StartTls()`` wraps the connection in client-side TLS (after STARTTLS/STLS was accepted); with
  ``hold_finished=True`` the client's last handshake flight leaves with the next Send, in one segment.
* ``Wait(seconds)`` pauses (for ``smtp_greeting_delay``).

``play`` returns a ``Transcript``: for every ``Read`` the bytes it consumed and how it ended (condition
met, connection closed, or nothing more arrived within the read timeout), for ``StartTls`` whether the
handshake worked. Only what must differ between two servers is normalised: the POP3/CRAM-MD5 salt
``<R.T@name>`` (also inside base64 challenges), after checking its shape.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# How long a Read waits for its condition before recording a timeout: a failing session is slow, a
# passing one never waits for it.
READ_TIMEOUT = 6.0
# Between the parts of a split Send, so that each part reaches the server in its own read.
PART_PAUSE = 0.05

# The salt as a transcript shows it once normalised, and its base64 form in CRAM-MD5 challenges.
SALT_TEXT = b"<R.T@%s>"
SALT_B64_TEXT = b"{base64 <R.T@%s>}"


@dataclass(frozen=True)
class Lines:
    """Read until this many more LF-terminated lines have been read."""

    count: int


@dataclass(frozen=True)
class Until:
    """Read up to and including the first ``terminator``."""

    terminator: bytes


@dataclass(frozen=True)
class Closed:
    """Read until the server closes the connection."""


Condition = Lines | Until | Closed


@dataclass(frozen=True)
class Send:
    """Write ``parts`` in order, each as a separate segment with a pause between them.

    With ``together``, the parts go out in one segment instead: under TLS each part is still its own TLS
    record, so the server receives several records in one read.
    """

    parts: tuple[bytes, ...]
    together: bool

    def __init__(self, *parts: bytes, together: bool = False) -> None:
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "together", together)


@dataclass(frozen=True)
class Read:
    """Read until ``until``; ``expect`` is what the spec says arrives (checked by the tests, not here)."""

    until: Condition
    expect: bytes = b""


@dataclass(frozen=True)
class StartTls:
    """Wrap the connection in client-side TLS.

    With ``hold_finished``, the client's last handshake flight is held back and goes out in the same
    segment as the next Send, so the server gets the first command together with the end of the handshake.
    """

    hold_finished: bool = False


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Send | Read | StartTls | Wait


@dataclass(frozen=True)
class ReadResult:
    """What one ``Read`` got: the bytes consumed and ``ended`` = "ok", "closed" or "timeout"."""

    data: bytes
    ended: str

    def __str__(self) -> str:
        return f"{self.data!r} [{self.ended}]"


@dataclass(frozen=True)
class TlsResult:
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        return "TLS ok" if self.ok else f"TLS failed: {self.detail}"


@dataclass
class Transcript:
    """Per step (in script order) what the client observed; ``None`` for Send and Wait steps."""

    steps: list[ReadResult | TlsResult | None] = field(default_factory=list)
    error: str = ""  # a client-side failure that ended the script early (e.g. connect refused)

    @property
    def reads(self) -> list[ReadResult]:
        return [step for step in self.steps if isinstance(step, ReadResult)]

    def received(self) -> bytes:
        """Every byte the client read, in order."""
        return b"".join(read.data for read in self.reads)

    def describe(self) -> str:
        lines = [f"  step {index}: {step}" for index, step in enumerate(self.steps) if step is not None]
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Endpoint:
    """Where to play a script: address, whether TLS starts at connect, and the client TLS context."""

    host: str
    port: int
    implicit_tls: bool = False
    tls_context: ssl.SSLContext | None = None
    server_hostname: str = "mail.example.com"


class _Connection:
    """A TCP connection, optionally with TLS on memory BIOs so that records and flushes are ours to place."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.sock: socket.socket = socket.create_connection(
            (endpoint.host, endpoint.port), timeout=READ_TIMEOUT
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.pending = b""  # application bytes received and not yet consumed by a Read
        self.closed = False

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _recv_raw(self, deadline: float) -> bytes | None:
        """Bytes from the socket; b"" at EOF; None if nothing arrived before the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def start_tls(self, step: StartTls) -> TlsResult:
        context = self.endpoint.tls_context
        if context is None:
            return TlsResult(False, "no client TLS context")
        tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=self.endpoint.server_hostname)
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self._recv_raw(deadline)
                if not chunk:
                    self.closed = True
                    return TlsResult(False, "closed during the handshake" if chunk == b"" else "timed out")
                self.incoming.write(chunk)
            except ssl.SSLError as error:
                self._flush()
                self.closed = True
                return TlsResult(False, type(error).__name__)
        self.tls = tls
        if not step.hold_finished:
            self._flush()
        return TlsResult(True)

    def send(self, step: Send) -> None:
        for index, part in enumerate(step.parts):
            if index and not step.together:
                time.sleep(PART_PAUSE)
            if self.tls is None:
                self.outgoing.write(part)
            else:
                self.tls.write(part)
            if not step.together:
                self._flush()
        self._flush()

    def _receive(self, deadline: float) -> bool:
        """Append what arrives to ``pending``; False once the connection is closed or the time is up."""
        while not self.closed:
            if self.tls is not None:
                try:
                    data = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLError):
                    data = b""
                if data is not None:
                    if not data:
                        self.closed = True
                        return False
                    self.pending += data
                    return True
                self._flush()  # TLS 1.3 may have something to say (e.g. a key update)
            chunk = self._recv_raw(deadline)
            if chunk is None:
                return False
            if self.tls is None:
                if not chunk:
                    self.closed = True
                    return False
                self.pending += chunk
                return True
            if chunk:
                self.incoming.write(chunk)
            else:
                self.incoming.write_eof()
        return False

    def read(self, until: Condition) -> ReadResult:
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            end = _satisfied(self.pending, until)
            if end is not None:
                data, self.pending = self.pending[:end], self.pending[end:]
                return ReadResult(data, "ok")
            if not self._receive(deadline):
                data, self.pending = self.pending, b""
                return ReadResult(data, "closed" if self.closed else "timeout")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _satisfied(data: bytes, until: Condition) -> int | None:
    """How many bytes of ``data`` the condition consumes, or None while it does not hold yet."""
    if isinstance(until, Lines):
        position = 0
        for _ in range(until.count):
            newline = data.find(b"\n", position)
            if newline < 0:
                return None
            position = newline + 1
        return position
    if isinstance(until, Until):
        found = data.find(until.terminator)
        return None if found < 0 else found + len(until.terminator)
    return None


def play(endpoint: Endpoint, script: Sequence[Step]) -> Transcript:
    """Run ``script`` on a fresh connection to ``endpoint`` and record what the client observed."""
    transcript = Transcript()
    try:
        connection = _Connection(endpoint)
    except OSError as error:
        transcript.error = f"connect failed: {error}"
        return transcript
    try:
        if endpoint.implicit_tls:
            result = connection.start_tls(StartTls())
            if not result.ok:
                transcript.error = str(result)
                return transcript
        for step in script:
            if isinstance(step, Send):
                connection.send(step)
                transcript.steps.append(None)
            elif isinstance(step, Read):
                transcript.steps.append(connection.read(step.until))
            elif isinstance(step, StartTls):
                if connection.pending:
                    transcript.error = (
                        f"bytes arrived in clear before the TLS handshake: {connection.pending!r}"
                    )
                    return transcript
                transcript.steps.append(connection.start_tls(step))
            else:
                time.sleep(step.seconds)
                transcript.steps.append(None)
    except OSError as error:
        transcript.error = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return transcript


# --- normalisation -----------------------------------------------------------------------------------------

_SALT = re.compile(rb"<(\d{1,10})\.(\d{1,20})@([A-Za-z0-9.-]+)>")
_CHALLENGE = re.compile(rb"^(\+ |334 )([A-Za-z0-9+/=]+)(\r?\n)", re.MULTILINE)


@dataclass(frozen=True)
class SaltWindow:
    """A salt is well formed if R < 2**31 and T (Unix time) lies within the session's lifetime."""

    started: float
    finished: float

    def accepts(self, match: re.Match[bytes]) -> bool:
        random_part, time_part = int(match[1]), int(match[2])
        return random_part < 2**31 and int(self.started) - 1 <= time_part <= int(self.finished) + 1


def normalise(data: bytes, window: SaltWindow) -> bytes:
    """``data`` with well-formed salts (plain and base64 in challenges) replaced by their placeholders."""

    def plain(match: re.Match[bytes]) -> bytes:
        return SALT_TEXT % match[3] if window.accepts(match) else match[0]

    def challenge(match: re.Match[bytes]) -> bytes:
        try:
            decoded = base64.b64decode(match[2], validate=True)
        except (binascii.Error, ValueError):
            return match[0]
        salt = _SALT.fullmatch(decoded)
        if salt is None or not window.accepts(salt):
            return match[0]
        return match[1] + SALT_B64_TEXT % salt[3] + match[3]

    return _SALT.sub(plain, _CHALLENGE.sub(challenge, data))


def play_normalised(endpoint: Endpoint, script: Sequence[Step]) -> Transcript:
    """``play``, then normalise the salts in every Read."""
    started = time.time()
    transcript = play(endpoint, script)
    window = SaltWindow(started, time.time())
    transcript.steps = [
        ReadResult(normalise(step.data, window), step.ended) if isinstance(step, ReadResult) else step
        for step in transcript.steps
    ]
    return transcript
