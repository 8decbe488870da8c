"""Idle sessions are closed: the pre-auth `timeout` before login, `proxy_timeout` once relaying.

Both end the session silently for the client and log `client timed out` at info, as nginx does; each case
runs against nginx on the same file and the client-visible bytes and the log line must agree.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.harness import IO_TIMEOUT, KINDS, LineClient, ProxyKind, RunningProxy, running_proxy
from tests.support.authserver import AuthReply, AuthServer
from tests.support.fake_backend import IMAP_LOGIN_THEN_ECHO, Expect, FakeBackend, Send, Step
from tests.support.loopback import IPV4_LOOPBACK

pytestmark = pytest.mark.nginx

TEMPLATE = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;

    server {
        listen 127.0.0.1:$port_imap_preauth;
        protocol imap;
        timeout 1s;
    }

    server {
        listen 127.0.0.1:$port_pop3_preauth;
        protocol pop3;
        timeout 1s;
    }

    server {
        listen 127.0.0.1:$port_smtp_preauth;
        protocol smtp;
        timeout 1s;
    }

    server {
        listen 127.0.0.1:$port_imap_stalled_backend;
        protocol imap;
        timeout 2s;
    }

    server {
        listen 127.0.0.1:$port_imap_relay;
        protocol imap;
        proxy_timeout 1s;
    }
}
"""


# Greets, reads the proxy's LOGIN and then never answers: the login hangs until the proxy's `timeout`.
STALLING_BACKEND: list[Step] = [
    Send(b"* OK backend ready\r\n"),
    Expect(b"a1 LOGIN {5}\r\n"),
    Expect(b"\0never sent\0"),
]


@dataclass
class Setup:
    proxies: dict[ProxyKind, RunningProxy]
    auth: AuthServer
    stalling_backend: FakeBackend


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("timeouts")
    with ExitStack() as stack:
        backend = stack.enter_context(FakeBackend(IMAP_LOGIN_THEN_ECHO))
        stalling = stack.enter_context(FakeBackend(STALLING_BACKEND))
        auth = stack.enter_context(AuthServer())
        auth.route("imap", IPV4_LOOPBACK, backend.port)
        proxies = {
            kind: stack.enter_context(
                running_proxy(kind, TEMPLATE, directory / kind, auth_http=auth.url("/auth"))
            )
            for kind in KINDS
        }
        yield Setup(proxies, auth, stalling)


def timed_out_line(proxy: RunningProxy, mark: int, message: str = "client timed out") -> str:
    """The `message` log line after `mark`, without time, pid, connection number and ports."""
    log = proxy.wait_for_log(mark, message)
    line = next(line for line in log.splitlines() if message in line)
    text = line.split("] ", 1)[1]
    text = re.sub(r"^\d+#\d+: \*\d+ ", "", text)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_an_idle_client_is_closed_after_the_pre_auth_timeout(setup: Setup, protocol: str) -> None:
    seen = {}
    for kind in KINDS:
        proxy = setup.proxies[kind]
        mark = proxy.log_mark()
        with LineClient(proxy.address(f"{protocol}_preauth")) as client:
            seen[kind] = (client.rest(), timed_out_line(proxy, mark))
    assert seen["mailgate"] == seen["nginx"]
    greeting, log_line = seen["mailgate"]
    assert greeting.count(b"\r\n") == 1  # the greeting, then nothing but the close
    assert log_line.startswith("client timed out")
    assert "while in auth state" in log_line


def test_the_pre_auth_timeout_is_a_deadline_that_client_commands_do_not_extend(setup: Setup) -> None:
    seen = {}
    for kind in KINDS:
        proxy = setup.proxies[kind]
        mark = proxy.log_mark()
        with LineClient(proxy.address("imap_preauth")) as client:
            client.line()
            replies = 0
            # NOOPs keep coming, well past the 1 s deadline, until the proxy closes the connection.
            while replies < 200:
                try:
                    client.send(b"n NOOP\r\n")
                except OSError:  # the close came in between
                    break
                if not client.line():
                    break
                replies += 1
                time.sleep(0.05)
            seen[kind] = timed_out_line(proxy, mark)
        assert replies < 200, f"{kind} never closed a busy pre-auth session"
    assert seen["mailgate"] == seen["nginx"]


def test_an_idle_relayed_session_is_closed_after_proxy_timeout(setup: Setup) -> None:
    seen = {}
    for kind in KINDS:
        proxy = setup.proxies[kind]
        with LineClient(proxy.address("imap_relay")) as client:
            client.line()
            client.send(b"a1 LOGIN alice secret\r\n")
            assert client.line() == b"a1 OK backend logged in\r\n"
            mark = proxy.log_mark()
            client.send(b"a2 NOOP\r\n")
            assert client.line() == b"a2 NOOP\r\n"  # echoed by the backend: the relay is up
            seen[kind] = (client.rest(), timed_out_line(proxy, mark))
    assert seen["mailgate"] == seen["nginx"]
    rest, log_line = seen["mailgate"]
    assert rest == b""
    assert log_line.startswith("client timed out")
    assert "while proxying" in log_line
    assert 'login: "alice", upstream: 127.0.0.1:PORT' in log_line


def stalled_login(setup: Setup, kind: ProxyKind) -> tuple[bytes, str]:
    """What the client gets when the backend stalls mid-login, and the proxy's `upstream timed out` line."""
    proxy = setup.proxies[kind]
    setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, setup.stalling_backend.port))
    mark = proxy.log_mark()
    with LineClient(proxy.address("imap_stalled_backend")) as client:
        client.line()
        client.send(b"a1 LOGIN alice secret\r\n")
        return client.rest(), timed_out_line(proxy, mark, "upstream timed out")


@pytest.fixture(scope="module")
def stalled(setup: Setup) -> dict[ProxyKind, tuple[bytes, str]]:
    return {kind: stalled_login(setup, kind) for kind in KINDS}


def test_a_backend_that_stalls_during_login_is_cut_at_timeout_with_an_internal_error(
    stalled: dict[ProxyKind, tuple[bytes, str]],
) -> None:
    seen = stalled
    assert seen["mailgate"][0] == seen["nginx"][0] == b"* BAD internal server error\r\n"
    assert seen["mailgate"][1].startswith("upstream timed out")
    assert "while sending LOGIN command to upstream" in seen["mailgate"][1]


def test_a_backend_login_timeout_is_logged_in_nginxs_words(
    stalled: dict[ProxyKind, tuple[bytes, str]],
) -> None:
    assert stalled["mailgate"][1] == stalled["nginx"][1]


def _push_after_login(listener: socket.socket, pushes: int, interval: float) -> None:
    """Serve one IMAP login, answer `a2 IDLE` with `pushes` untagged lines `interval` apart, and close."""
    listener.settimeout(IO_TIMEOUT)
    connection, _ = listener.accept()
    with connection, connection.makefile("rb") as lines:
        connection.sendall(b"* OK backend ready\r\n")
        for reply in (b"+ OK\r\n", b"+ OK\r\n", b"a1 OK backend logged in\r\n"):
            lines.readline()
            connection.sendall(reply)
        lines.readline()  # a2 IDLE
        connection.sendall(b"+ idling\r\n")
        for count in range(pushes):
            time.sleep(interval)
            connection.sendall(b"* %d EXISTS\r\n" % (count + 1))
        connection.sendall(b"a2 OK IDLE terminated\r\n")


def test_backend_pushes_keep_a_relayed_session_alive_past_proxy_timeout(setup: Setup) -> None:
    # mailgate counts a transfer either way as activity (proxy/relay.py); nginx 1.22 re-arms proxy_timeout on
    # client socket events only (spec §5.5, quirk 7), so it cuts a silent IDLE client the server pushes to.
    pushes = 8
    proxy = setup.proxies["mailgate"]
    with socket.create_server((IPV4_LOOPBACK, 0)) as listener:
        backend = threading.Thread(target=_push_after_login, args=(listener, pushes, 0.4), daemon=True)
        backend.start()
        setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, listener.getsockname()[1]))
        mark = proxy.log_mark()
        with LineClient(proxy.address("imap_relay")) as client:
            client.line()
            client.send(b"a1 LOGIN alice secret\r\na2 IDLE\r\n")
            received = client.rest()
        backend.join(IO_TIMEOUT)
    expected = b"".join(b"* %d EXISTS\r\n" % (count + 1) for count in range(pushes))
    assert received == b"a1 OK backend logged in\r\n+ idling\r\n" + expected + b"a2 OK IDLE terminated\r\n"
    assert "client timed out" not in proxy.log_since(mark)
