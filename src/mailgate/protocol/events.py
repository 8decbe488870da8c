"""What a pre-auth engine asks of the session that drives it (see `PreAuthEngine.next_event`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.protocol.credentials import Credentials


@dataclass(frozen=True)
class NeedData:
    """Nothing to do until more client bytes are fed with `receive_data`."""


@dataclass(frozen=True)
class Reply:
    """Bytes to write to the client, completely, before calling `next_event` again."""

    data: bytes


@dataclass(frozen=True)
class StartTls:
    """Start the server TLS handshake now; the OK reply was the previous `Reply`.

    Every plaintext byte the client sent after the command has been discarded. Call `tls_established`
    once the handshake (and the client-certificate check) succeeded.
    """


@dataclass(frozen=True)
class Authenticate:
    """Credentials are complete: ask the auth service. The engine does nothing until `auth_failed`."""

    credentials: Credentials


@dataclass(frozen=True)
class Close:
    """Close the connection (after writing every earlier `Reply`). `reason` is for debugging, not logs."""

    reason: str


@dataclass(frozen=True)
class Log:
    """One of nginx's session messages (`client sent too long command "..."`), at nginx level `level`.

    `message` is printable text (client bytes decoded with backslash escapes for non-UTF-8 bytes);
    `raw` holds nginx's exact bytes, client bytes included verbatim.
    """

    level: str
    message: str
    raw: bytes = field(default=b"", repr=False)

    @classmethod
    def info(cls, raw: bytes) -> Log:
        return cls("info", raw.decode("utf-8", errors="backslashreplace"), raw)


Event = NeedData | Reply | StartTls | Authenticate | Close | Log
