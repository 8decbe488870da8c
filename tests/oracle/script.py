"""How session tables are written: a ``Session`` is a named script for one server of a configuration group,
with what the spec says the client receives written next to each command.

    script = greeting(b"* OK IMAP4 ready\\r\\n") + say(b"a NOOP\\r\\n", b"a OK completed\\r\\n")
    Session("imap-noop", "imap", "imap_plain", script)

``say(send, expect)`` sends and reads as many lines as ``expect`` has (or until the connection closes with
``closes=True``), so the expected bytes also drive the reads; ``expected_transcript`` turns a script into
the transcript a server following the spec produces.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from tests.oracle.transcript import (
    Closed,
    Lines,
    Read,
    ReadResult,
    Send,
    StartTls,
    Step,
    TlsResult,
    Transcript,
)

SERVER_NAME = b"mail.example.com"
SALT = b"<R.T@mail.example.com>"  # a normalised salt (see transcript.normalise)
SALT_B64 = b"{base64 <R.T@mail.example.com>}"
# A CRAM-MD5 digest: nginx checks only that it is 32 characters long.
DIGEST = b"0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Session:
    id: str
    group: str  # the configuration template, conf/<group>.conf
    server: str  # the port placeholder naming the server block
    script: tuple[Step, ...]

    def __init__(self, id: str, group: str, server: str, script: Sequence[Step]) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "script", tuple(script))


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain_response(user: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    """SASL PLAIN initial response: base64 of ``authzid NUL user NUL password``."""
    return b64(authzid + b"\0" + user + b"\0" + password)


def cram_response(user: bytes, digest: bytes = DIGEST) -> bytes:
    return b64(user + b" " + digest)


def greeting(expect: bytes) -> list[Step]:
    return [Read(Lines(expect.count(b"\n")), expect)]


def say(send: bytes | Sequence[bytes], expect: bytes, *, closes: bool = False) -> list[Step]:
    """Send ``send`` (a sequence: parts sent as separate segments), then read ``expect``'s lines.

    With ``closes``, read until the server closes the connection instead.
    """
    parts = (send,) if isinstance(send, bytes) else tuple(send)
    until = Closed() if closes else Lines(expect.count(b"\n"))
    return [Send(*parts), Read(until, expect)]


def closed(expect: bytes = b"") -> list[Step]:
    """Read until the server closes the connection."""
    return [Read(Closed(), expect)]


def starttls() -> list[Step]:
    return [StartTls()]


def expected_transcript(script: Sequence[Step]) -> Transcript:
    """What a server that behaves as each step's ``expect`` says leaves in a transcript."""
    transcript = Transcript()
    for step in script:
        if isinstance(step, Read):
            ended = "closed" if isinstance(step.until, Closed) else "ok"
            transcript.steps.append(ReadResult(step.expect, ended))
        elif isinstance(step, StartTls):
            transcript.steps.append(TlsResult(True))
        else:
            transcript.steps.append(None)
    return transcript


def crlf(*lines: bytes) -> bytes:
    """Lines joined, each ending in CRLF."""
    return b"".join(line + b"\r\n" for line in lines)
