"""The transcript harness itself: what it reads per step, how it reports closes, and what it normalises."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.oracle.transcript import (
    Closed,
    Endpoint,
    Lines,
    Read,
    ReadResult,
    SaltWindow,
    Send,
    Step,
    Until,
    normalise,
    play,
)
from tests.support.loopback import IPV4_LOOPBACK

NOW = time.time()
WINDOW = SaltWindow(NOW - 5, NOW + 5)


def test_salt_in_greeting_is_normalised() -> None:
    greeting = b"+OK POP3 ready <1896434728.%d@mail.example.com>\r\n" % int(NOW)
    assert normalise(greeting, WINDOW) == b"+OK POP3 ready <R.T@mail.example.com>\r\n"


def test_salt_in_base64_challenge_is_normalised() -> None:
    challenge = b"334 " + base64.b64encode(b"<42.%d@mail.example.com>" % int(NOW)) + b"\r\n"
    assert normalise(challenge, WINDOW) == b"334 {base64 <R.T@mail.example.com>}\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"+OK POP3 ready <2147483648.%d@mail.example.com>\r\n" % int(NOW),  # R beyond C random()
        b"+OK POP3 ready <1.1000000000@mail.example.com>\r\n",  # T outside the session
        b"+ " + base64.b64encode(b"<1.1000000000@mail.example.com>") + b"\r\n",
        b"+ VXNlcm5hbWU6\r\n",  # a prompt, not a salt
    ],
    ids=["random-part-too-large", "time-outside-session", "base64-time-outside-session", "prompt"],
)
def test_malformed_or_foreign_salts_are_left_alone(data: bytes) -> None:
    assert normalise(data, WINDOW) == data


@pytest.fixture
def line_server() -> Iterator[int]:
    """Sends a greeting, answers each line with two lines, and closes on QUIT."""
    listener = socket.create_server((IPV4_LOOPBACK, 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"hello\r\n")
            for line in lines:
                connection.sendall(b"1 " + line + b"2 " + line)
                if line.startswith(b"QUIT"):
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(5)


def test_reads_stop_at_their_condition_and_keep_the_rest_for_the_next(line_server: int) -> None:
    script: list[Step] = [
        Read(Lines(1)),
        Send(b"A\r\n", b"B\r\n"),
        Read(Lines(1)),
        Read(Until(b"2 B\r\n")),
        Send(b"QUIT\r\n"),
        Read(Closed()),
    ]
    transcript = play(Endpoint(IPV4_LOOPBACK, line_server), script)
    assert transcript.steps == [
        ReadResult(b"hello\r\n", "ok"),
        None,
        ReadResult(b"1 A\r\n", "ok"),
        ReadResult(b"2 A\r\n1 B\r\n2 B\r\n", "ok"),
        None,
        ReadResult(b"1 QUIT\r\n2 QUIT\r\n", "closed"),
    ]
    assert not transcript.error


def test_refused_connection_is_an_error_not_a_transcript() -> None:
    with socket.socket() as unused:
        unused.bind((IPV4_LOOPBACK, 0))
        port = unused.getsockname()[1]
    transcript = play(Endpoint(IPV4_LOOPBACK, port), [Read(Lines(1))])
    assert transcript.error.startswith("connect failed")
    assert transcript.steps == []
