"""Building server configurations and driving pre-auth engines the way a session does."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailgate.config import model
from mailgate.protocol.credentials import Credentials
from mailgate.protocol.engine import ClientBuffer, PreAuthEngine
from mailgate.protocol.events import Authenticate, Close, Event, Log, NeedData, Reply, StartTls

SERVER_NAME = "mx.example"
SALT = b"<1896434728.1700000000@mx.example>"


def server_config(
    protocol: model.Protocol,
    *,
    starttls: model.StartTls = model.StartTls.OFF,
    max_errors: int = 5,
    imap: model.ImapSettings | None = None,
    pop3: model.Pop3Settings | None = None,
    smtp: model.SmtpSettings | None = None,
) -> model.ServerConfig:
    url = model.AuthHttpUrl(socket.AF_INET, "127.0.0.1", 9000, "/", "localhost", "127.0.0.1:9000")
    return model.ServerConfig(
        source=model.SourceRef("mail.conf", 1),
        protocol=protocol,
        listens=(),
        core=model.CoreSettings(server_name=SERVER_NAME, max_errors=max_errors),
        auth_http=model.AuthHttpSettings(url=url),
        proxy=model.ProxySettings(),
        realip=model.RealIpSettings(),
        ssl=model.SslSettings(starttls=starttls),
        imap=imap or model.ImapSettings(),
        pop3=pop3 or model.Pop3Settings(),
        smtp=smtp or model.SmtpSettings(),
    )


@dataclass
class Session:
    """Drives one engine: feeds chunks, collects events until the engine needs data or a callback."""

    engine: PreAuthEngine
    events: list[Event] = field(default_factory=list)

    def send(self, *chunks: bytes) -> list[Event]:
        """Feed each chunk in turn (as separate reads); return the events they caused."""
        new: list[Event] = []
        for chunk in chunks:
            self.engine.receive_data(chunk)
            new += self.drain()
        return new

    def drain(self) -> list[Event]:
        new: list[Event] = []
        while True:
            event = self.engine.next_event()
            if isinstance(event, NeedData):
                break
            new.append(event)
            if isinstance(event, Close | StartTls | Authenticate):
                break
        self.events += new
        return new

    def output(self, *chunks: bytes) -> bytes:
        """What the client receives for these chunks."""
        return replies(self.send(*chunks))

    def reject(self, text: bytes = b"Invalid login", code: bytes | None = None) -> bytes:
        """The auth service said no (with Auth-Wait): the rejection line, then whatever follows."""
        line = self.engine.auth_failed(text, code)
        return line + replies(self.drain())


def replies(events: Iterable[Event]) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, Reply))


def credentials(events: Iterable[Event]) -> list[Credentials]:
    return [event.credentials for event in events if isinstance(event, Authenticate)]


def logs(events: Iterable[Event]) -> list[bytes]:
    return [event.raw for event in events if isinstance(event, Log)]


def closed(events: Iterable[Event]) -> bool:
    return any(isinstance(event, Close) for event in events)


def every_split(data: bytes) -> Iterable[tuple[bytes, ...]]:
    """`data` whole, byte by byte, and cut in two at every position."""
    yield (data,)
    yield tuple(data[i : i + 1] for i in range(len(data)))
    for cut in range(1, len(data)):
        yield (data[:cut], data[cut:])


class _LineParser(Protocol):
    def parse(self, buffer: ClientBuffer) -> Any: ...
    def _parse_by_state(self, buffer: ClientBuffer) -> Any: ...


def parsed_both_ways(
    make_parser: Callable[[], _LineParser],
    line: bytes,
    observe: Callable[[Any, ClientBuffer], tuple[object, ...]],
) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """What a fresh parser makes of `line` by its fast path (`parse`) and by its state machine: the result,
    where the buffer stands, and what `observe(parser, buffer)` reports of the parser after it."""
    outcomes = []
    for by_state in (False, True):
        buffer = ClientBuffer(4096)
        buffer.feed(line)
        buffer.fill()
        parser = make_parser()
        result = parser._parse_by_state(buffer) if by_state else parser.parse(buffer)
        outcomes.append((result, buffer.pos, *observe(parser, buffer)))
    return outcomes[0], outcomes[1]
