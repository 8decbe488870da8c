"""Relay integrity under load: many concurrent sessions move megabytes both ways through the proxy intact.

Each session logs in (IMAP, POP3 or SMTP) to a backend that then streams: the client announces a seed and
two sizes and sends that many random bytes up; at the same time the backend sends the seed's pseudo-random
bytes down, then the SHA-256 of what it received, and closes. The client checks the stream it got against
the seed and the backend's digest against what it sent, so a lost, duplicated or reordered byte in either
direction fails the session. Some clients pipeline the stream header and data behind their login command,
which the proxy must hand to the backend once logged in (spec §5.5).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from tests.e2e.harness import IO_TIMEOUT, RunningProxy, running_proxy
from tests.support.authserver import AuthServer
from tests.support.loopback import IPV4_LOOPBACK, wait_until

SESSIONS = 32
PROTOCOLS = ("imap", "pop3", "smtp")
CHUNK = 65536

TEMPLATE = """
worker_processes 2;

events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;

    server {
        listen 127.0.0.1:$port_imap;
        protocol imap;
    }

    server {
        listen 127.0.0.1:$port_pop3;
        protocol pop3;
    }

    server {
        listen 127.0.0.1:$port_smtp;
        protocol smtp;
    }
}
"""


async def backend_login(protocol: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The backend's side of the proxy's login (spec §5.1-§5.3), for any user and password."""
    if protocol == "imap":
        writer.write(b"* OK streamer ready\r\n")
        tag = (await reader.readline()).split(b" ", 1)[0]  # `<tag> LOGIN {n}`
        writer.write(b"+ OK\r\n")
        await reader.readline()  # `<login> {m}`
        writer.write(b"+ OK\r\n")
        await reader.readline()  # the password
        writer.write(tag + b" OK streamer logged in\r\n")
    elif protocol == "pop3":
        writer.write(b"+OK streamer ready\r\n")
        await reader.readline()  # USER
        writer.write(b"+OK\r\n")
        await reader.readline()  # PASS
        writer.write(b"+OK streamer logged in\r\n")
    else:
        writer.write(b"220 streamer ESMTP\r\n")
        for line in (b"EHLO mail.example.com", b"XCLIENT ", b"EHLO client.example.org"):
            assert (await reader.readline()).startswith(line)
            writer.write(b"220 streamer ESMTP\r\n" if line == b"XCLIENT " else b"250 streamer\r\n")
    await writer.drain()


def stream_bytes(seed: int, size: int) -> Iterator[bytes]:
    generator = random.Random(seed)
    for offset in range(0, size, CHUNK):
        yield generator.randbytes(min(CHUNK, size - offset))


async def backend_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After the login: `STREAM seed up down`, then send `down` bytes while hashing `up` bytes received."""
    _, seed, up, down = (await reader.readline()).split()

    async def send() -> None:
        for chunk in stream_bytes(int(seed), int(down)):
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    digest = hashlib.sha256()
    remaining = int(up)
    while remaining:
        chunk = await reader.read(min(CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    await sender
    writer.write(digest.digest())
    await writer.drain()
    writer.close()


def serve_backend(protocol: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await backend_login(protocol, reader, writer)
            await backend_stream(reader, writer)
        finally:
            writer.close()

    return serve


# The client's login, pipelined or not: (greeting check, [(command, reply check)]).
PLAIN = base64.b64encode(b"\0alice\0secret")
CLIENT_LOGIN: dict[str, list[tuple[bytes, bytes]]] = {
    "imap": [(b"a1 LOGIN alice secret\r\n", b"a1 OK streamer logged in\r\n")],
    "pop3": [(b"USER alice\r\n", b"+OK\r\n"), (b"PASS secret\r\n", b"+OK streamer logged in\r\n")],
    "smtp": [
        (b"EHLO client.example.org\r\n", b"250 AUTH PLAIN LOGIN\r\n"),
        (b"AUTH PLAIN " + PLAIN + b"\r\n", b"235 2.0.0 OK\r\n"),
    ],
}


@dataclass(frozen=True)
class Transfer:
    protocol: str
    seed: int
    up: int
    down: int
    pipelined: bool


async def read_reply(reader: asyncio.StreamReader, last_line: bytes) -> None:
    while True:
        line = await reader.readline()
        assert line, f"closed while waiting for {last_line!r}"
        if line == last_line:
            return
        assert line[:4] in (b"250-", b"* OK", b"+OK ", b"220 "), line


async def client_session(proxy: RunningProxy, transfer: Transfer) -> None:
    reader, writer = await asyncio.open_connection(*proxy.address(transfer.protocol), limit=CHUNK * 4)
    await reader.readline()  # the proxy's greeting
    upload = stream_bytes(transfer.seed + 1, transfer.up)
    sent = hashlib.sha256()
    header = b"STREAM %d %d %d\r\n" % (transfer.seed, transfer.up, transfer.down)
    steps = CLIENT_LOGIN[transfer.protocol]
    # A pipelining client sends the stream header and its first 64 KiB right behind the login command.
    early = b""
    if transfer.pipelined:
        first = next(upload)
        sent.update(first)
        early = header + first
    for index, (command, reply) in enumerate(steps):
        writer.write(command + (early if index == len(steps) - 1 else b""))
        await read_reply(reader, reply)
    if not transfer.pipelined:
        writer.write(header)

    async def send() -> None:
        for chunk in upload:
            sent.update(chunk)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    expected = hashlib.sha256()
    for chunk in stream_bytes(transfer.seed, transfer.down):
        expected.update(chunk)
    received = hashlib.sha256()
    remaining = transfer.down
    while remaining:
        chunk = await reader.read(min(CHUNK, remaining))
        assert chunk, f"{transfer}: closed with {remaining} bytes still to come"
        received.update(chunk)
        remaining -= len(chunk)
    await sender
    backend_digest = await reader.readexactly(32)
    assert await reader.read() == b"", f"{transfer}: bytes after the backend's digest"
    writer.close()
    assert received.digest() == expected.digest(), f"{transfer}: the downstream bytes differ"
    assert backend_digest == sent.digest(), f"{transfer}: the upstream bytes differ"


@pytest.fixture(params=[False, True], ids=["single-process", "master-and-two-workers"])
def proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningProxy, AuthServer]]:
    directory: Path = tmp_path_factory.mktemp("relay")
    with ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        running = stack.enter_context(
            running_proxy("mailgate", TEMPLATE, directory, master_process=request.param, auth_http=auth.url())
        )
        yield running, auth


def test_concurrent_sessions_move_megabytes_both_ways_through_mailgate_intact(
    proxy: tuple[RunningProxy, AuthServer],
) -> None:
    running, auth = proxy
    chooser = random.Random(20240611)
    transfers = [
        Transfer(
            protocol=PROTOCOLS[index % 3],
            seed=chooser.getrandbits(32),
            up=chooser.randrange(1, 3 * 1024 * 1024),
            down=chooser.randrange(1, 3 * 1024 * 1024),
            pipelined=index % 2 == 1,
        )
        for index in range(SESSIONS)
    ]

    async def main() -> None:
        servers = {
            protocol: await asyncio.start_server(serve_backend(protocol), IPV4_LOOPBACK, 0)
            for protocol in PROTOCOLS
        }
        for protocol, server in servers.items():
            auth.route(protocol, IPV4_LOOPBACK, server.sockets[0].getsockname()[1])
        try:
            async with asyncio.timeout(IO_TIMEOUT * 6):
                await asyncio.gather(*(client_session(running, transfer) for transfer in transfers))
        finally:
            for server in servers.values():
                server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    # A client is done once it has every byte; the worker logs the session's end right after closing it.
    wait_until(lambda: running.log_text().count("proxied session done") >= SESSIONS, IO_TIMEOUT)
    assert running.log_text().count("proxied session done") == SESSIONS
    assert "[alert]" not in running.log_text()
