"""Failure paths end to end: each failure gives the client nginx's exact reply, and the proxy serves on.

nginx and mailgate run one configuration against one auth server; healthy logins go to the real Dovecot and
Postfix (`harness.Directory`), failing ones to scripted backends. Each scenario is played against nginx, then
mailgate: what the client received (and whether the connection was closed) must be the same bytes, and
afterwards a new session through the same proxy must still log in.

Clients that hang up are checked for what follows on the proxy's side: every backend connection the session
opened is closed, mailgate logs no alert, and the next session works.
"""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.harness import (
    INVALID_LOGIN,
    IO_TIMEOUT,
    KINDS,
    Directory,
    LineClient,
    ProxyKind,
    RunningProxy,
    running_proxy,
)
from tests.support.authserver import AuthReply, AuthServer
from tests.support.dovecot import Dovecot
from tests.support.fake_backend import Close, Echo, Expect, FakeBackend, Send, Step
from tests.support.loopback import IPV4_LOOPBACK, wait_until
from tests.support.postfix import Postfix

pytestmark = pytest.mark.nginx

PROTOCOLS = ("imap", "pop3", "smtp")
PASSWORD = "alice-password"  # alice's password in the test Dovecot
CLOSED = b"[closed]"
TEMPORARY = "Temporary server problem, try again later"

TEMPLATE = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;
"""
for _protocol in PROTOCOLS:
    TEMPLATE += f"""
    server {{
        listen 127.0.0.1:$port_{_protocol};
        protocol {_protocol};
    }}

    server {{
        listen 127.0.0.1:$port_{_protocol}_pass_error;
        protocol {_protocol};
        proxy_pass_error_message on;
    }}

    server {{
        listen 127.0.0.1:$port_{_protocol}_auth_down;
        protocol {_protocol};
        auth_http $dead_auth;
    }}

    server {{
        listen 127.0.0.1:$port_{_protocol}_auth_timeout;
        protocol {_protocol};
        auth_http_timeout 1s;
    }}

    server {{
        listen 127.0.0.1:$port_{_protocol}_short;
        protocol {_protocol};
        timeout 2s;
    }}
"""
TEMPLATE += "}\n"


@dataclass
class Setup:
    auth: AuthServer
    directory: Directory
    proxies: dict[ProxyKind, RunningProxy]
    refusing_port: int  # bound, never listening: connecting to it is refused


@pytest.fixture(scope="module")
def setup(dovecot: Dovecot, postfix: Postfix, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("failures")
    with ExitStack() as stack:
        # Bound but not listening: connecting is refused, and no one else can take the port meanwhile.
        refusing = stack.enter_context(socket.socket())
        refusing.bind((IPV4_LOOPBACK, 0))
        refusing_port = refusing.getsockname()[1]
        auth = stack.enter_context(AuthServer())
        routes = Directory(dovecot, postfix)
        auth.set_default(routes)
        auth_http, dead_auth = auth.url("/auth"), f"{IPV4_LOOPBACK}:{refusing_port}/auth"
        proxies = {
            kind: stack.enter_context(
                running_proxy(kind, TEMPLATE, directory / kind, auth_http=auth_http, dead_auth=dead_auth)
            )
            for kind in KINDS
        }
        yield Setup(auth, routes, proxies, refusing_port)


# --- one login, as the client sees it ----------------------------------------------------------------------

# protocol: (what precedes the authenticating command, the command): alice logs in with her password.
LOGIN: dict[str, tuple[bytes, bytes]] = {
    "imap": (b"", f"a1 LOGIN alice {PASSWORD}\r\n".encode()),
    "pop3": (b"USER alice\r\n", f"PASS {PASSWORD}\r\n".encode()),
    "smtp": (
        b"EHLO client.example.org\r\n",
        b"AUTH PLAIN " + base64.b64encode(f"\0alice\0{PASSWORD}".encode()) + b"\r\n",
    ),
}
# The start of the reply that says the client is logged in (IMAP: Dovecot's own tagged OK).
LOGGED_IN = {"imap": b"a1 OK ", "pop3": b"+OK ", "smtp": b"235 2.0.0 OK\r\n"}
INTERNAL_ERROR = {
    "imap": b"* BAD internal server error\r\n",
    "pop3": b"-ERR internal server error\r\n",
    "smtp": b"451 4.3.2 Internal server error\r\n",
}


def rejection(protocol: str, text: str, smtp_code: bytes = b"535 5.7.0") -> bytes:
    prefix = {"imap": b"a1 NO", "pop3": b"-ERR", "smtp": smtp_code}[protocol]
    return prefix + b" " + text.encode() + b"\r\n"


def log_in(address: tuple[str, int], protocol: str, *, then: bytes = b"") -> bytes:
    """What the client receives logging in as alice. A successful login ends there unless `then` is
    given: it is sent, and everything up to the proxy's close is read. A failed login is read up to the
    close. `CLOSED` marks a close."""
    prelude, command = LOGIN[protocol]
    with LineClient(address) as client:
        seen = client.reply()
        if prelude:
            client.send(prelude)
            seen += client.reply()
        client.send(command)
        reply = client.reply()
        seen += reply
        if reply.startswith(LOGGED_IN[protocol]):
            if not then:
                return seen
            client.send(then)
        return seen + client.rest() + CLOSED


def assert_serves(proxy: RunningProxy, protocol: str) -> None:
    """A new session logs in through `proxy` to the real backend."""
    seen = log_in(proxy.address(protocol), protocol)
    assert seen.splitlines(keepends=True)[-1].startswith(LOGGED_IN[protocol]), (seen, proxy.log_text())


def assert_no_alert(proxy: RunningProxy) -> None:
    log = proxy.log_text()
    assert not [level for level in ("[alert]", "[crit]", "[emerg]") if level in log], log


def on_both(setup: Setup, protocol: str, play: Callable[[RunningProxy], bytes]) -> dict[ProxyKind, bytes]:
    """`play` against nginx, then mailgate; after each the proxy must still serve a new `protocol` session."""
    seen = {}
    for kind in KINDS:
        seen[kind] = play(setup.proxies[kind])
        assert_serves(setup.proxies[kind], protocol)
    assert_no_alert(setup.proxies["mailgate"])
    return seen


# --- the auth service fails --------------------------------------------------------------------------------

Route = tuple[str, int]
# name: (server suffix, the auth replies for the login given the healthy route, the client's last reply)
AUTH_FAILURES: dict[str, tuple[str, Callable[[Route], list[AuthReply]], Callable[[str], bytes]]] = {
    "service-down": ("_auth_down", lambda route: [], INTERNAL_ERROR.__getitem__),
    "slow-past-auth-http-timeout": (
        "_auth_timeout",
        lambda route: [AuthReply.ok(*route).delayed(3)],
        INTERNAL_ERROR.__getitem__,
    ),
    "garbage": ("", lambda route: [AuthReply.garbage()], INTERNAL_ERROR.__getitem__),
    # nginx 1.22 sometimes misses the end of these two until auth_http_timeout (its edge-triggered read
    # stops at a full buffer, or at data and FIN read together), so they go to a server with a short one.
    "oversized-headers": (
        "_auth_timeout",
        lambda route: [AuthReply.oversized(*route)],
        INTERNAL_ERROR.__getitem__,
    ),
    "truncated": ("_auth_timeout", lambda route: [AuthReply.truncated()], INTERNAL_ERROR.__getitem__),
    "closed-without-reply": ("", lambda route: [AuthReply.close_early()], INTERNAL_ERROR.__getitem__),
    "backend-host-name-instead-of-address": (
        "",
        lambda route: [AuthReply.ok("localhost", route[1])],
        INTERNAL_ERROR.__getitem__,
    ),
    "backend-port-out-of-range": (
        "",
        lambda route: [AuthReply.ok(route[0], 65536)],
        INTERNAL_ERROR.__getitem__,
    ),
    "no-backend-address": (
        "",
        lambda route: [AuthReply(headers=(("Auth-Status", "OK"),))],
        INTERNAL_ERROR.__getitem__,
    ),
    "rejected": (
        "",
        lambda route: [AuthReply.error(INVALID_LOGIN)],
        lambda protocol: rejection(protocol, INVALID_LOGIN),
    ),
    "rejected-with-error-code": (
        "",
        lambda route: [AuthReply.error(TEMPORARY, error_code="451 4.3.0")],
        lambda protocol: rejection(protocol, TEMPORARY, b"451 4.3.0"),
    ),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(AUTH_FAILURES))
def test_an_auth_service_failure_gives_nginxs_reply_and_the_proxy_serves_on(
    setup: Setup, name: str, protocol: str
) -> None:
    suffix, replies, last_reply = AUTH_FAILURES[name]

    def play(proxy: RunningProxy) -> bytes:
        setup.auth.respond_with(*replies(setup.directory.route(protocol)))
        return log_in(proxy.address(protocol + suffix), protocol)

    seen = on_both(setup, protocol, play)
    assert seen["mailgate"] == seen["nginx"]
    assert seen["mailgate"].endswith(last_reply(protocol) + CLOSED)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_http_status_of_the_auth_reply_is_ignored(setup: Setup, protocol: str) -> None:
    def play(proxy: RunningProxy) -> bytes:
        route = setup.directory.route(protocol)
        reply = AuthReply.ok(*route)
        setup.auth.respond_with(AuthReply(headers=reply.headers, status_line="HTTP/1.0 500 Internal Error"))
        return log_in(proxy.address(protocol), protocol)

    seen = on_both(setup, protocol, play)
    assert seen["mailgate"] == seen["nginx"]
    assert seen["mailgate"].splitlines(keepends=True)[-1].startswith(LOGGED_IN[protocol])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refusal_with_auth_wait_is_told_after_the_wait_and_the_next_login_succeeds(
    setup: Setup, protocol: str
) -> None:
    prelude, command = LOGIN[protocol]

    def play(proxy: RunningProxy) -> bytes:
        setup.auth.respond_with(AuthReply.error(INVALID_LOGIN, wait=1))
        with LineClient(proxy.address(protocol)) as client:
            seen = client.reply()
            for _ in range(2):
                if prelude:
                    client.send(prelude)
                    seen += client.reply()
                client.send(command)
                seen += client.reply()
            return seen

    seen = on_both(setup, protocol, play)
    assert seen["mailgate"] == seen["nginx"]
    _, second = seen["mailgate"].split(rejection(protocol, INVALID_LOGIN))
    assert second.splitlines(keepends=True)[-1].startswith(LOGGED_IN[protocol])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auth_status_wait_asks_again_with_the_same_attempt_and_then_logs_in(
    setup: Setup, protocol: str
) -> None:
    requests: dict[ProxyKind, list[str | None]] = {}

    def play(proxy: RunningProxy) -> bytes:
        before = len(setup.auth.requests)
        setup.auth.respond_with(AuthReply.retry_later(1))
        seen = log_in(proxy.address(protocol), protocol)
        asked = setup.auth.requests[before:]
        requests[proxy.kind] = [request.header("Auth-Login-Attempt") for request in asked]
        return seen

    seen = on_both(setup, protocol, play)
    assert seen["mailgate"] == seen["nginx"]
    assert seen["mailgate"].splitlines(keepends=True)[-1].startswith(LOGGED_IN[protocol])
    assert requests["mailgate"] == requests["nginx"] == ["1", "1"]


def test_mailgate_gives_up_on_an_auth_server_that_never_stops_saying_wait(setup: Setup) -> None:
    # nginx asks forever (spec §3.5, quirk 5); mailgate stops after ten re-queries and fails the login.
    proxy = setup.proxies["mailgate"]
    mark = proxy.log_mark()
    setup.auth.set_default(AuthReply.retry_later(0))
    try:
        seen = log_in(proxy.address("imap"), "imap")
    finally:
        setup.auth.set_default(setup.directory)
    assert seen.endswith(INTERNAL_ERROR["imap"] + CLOSED)
    proxy.wait_for_log(mark, "sent WAIT 11 times, giving up")
    assert_serves(proxy, "imap")


# --- the backend fails ------------------------------------------------------------------------------------

# The backend's side of alice's login, up to the reply that completes it (nginx's dialogue, spec §5.1-§5.3).
BACKEND_LOGIN: dict[str, list[Step]] = {
    "imap": [
        Send(b"* OK backend ready\r\n"),
        Expect(b"a1 LOGIN {5}\r\n"),
        Send(b"+ OK\r\n"),
        Expect(b"alice {%d}\r\n" % len(PASSWORD)),
        Send(b"+ OK\r\n"),
        Expect(PASSWORD.encode() + b"\r\n"),
    ],
    "pop3": [
        Send(b"+OK backend ready\r\n"),
        Expect(b"USER alice\r\n"),
        Send(b"+OK\r\n"),
        Expect(f"PASS {PASSWORD}\r\n".encode()),
    ],
    "smtp": [
        Send(b"220 backend.example.net ESMTP\r\n"),
        Expect(b"EHLO mail.example.com\r\n"),
        Send(b"250-backend.example.net\r\n250 XCLIENT ADDR LOGIN NAME\r\n"),
        Expect(b"XCLIENT ADDR=127.0.0.1 LOGIN=alice NAME=[UNAVAILABLE]\r\n"),
        Send(b"220 backend.example.net ESMTP\r\n"),
        Expect(b"EHLO client.example.org\r\n"),
    ],
}
BACKEND_LOGGED_IN = {
    "imap": b"a1 OK backend logged in\r\n",
    "pop3": b"+OK backend logged in\r\n",
    "smtp": b"250 backend.example.net\r\n",
}
BACKEND_REFUSES = {
    "imap": b"a1 NO [UNAVAILABLE] backend in maintenance\r\n",
    "pop3": b"-ERR [SYS/TEMP] backend in maintenance\r\n",
    "smtp": b"421 4.3.2 backend in maintenance\r\n",
}
BAD_GREETING = {
    "imap": b"* BYE backend shutting down\r\n",
    "pop3": b"-ERR backend busy\r\n",
    "smtp": b"554 5.3.2 backend busy\r\n",
}
# A command after the login, the backend's answer to it; then the backend closes the connection.
AFTER_LOGIN = {
    "imap": (b"a2 NOOP\r\n", b"* 3 EXISTS\r\na2 OK NOOP done\r\n"),
    "pop3": (b"STAT\r\n", b"+OK 2 320\r\n"),
    "smtp": (b"NOOP\r\n", b"250 2.0.0 Ok\r\n"),
}
NEVER = Expect(b"\0never sent\0")  # waits until the proxy closes the connection


def backend_scripts(protocol: str) -> dict[str, list[Step]]:
    login = BACKEND_LOGIN[protocol]
    command, answer = AFTER_LOGIN[protocol]
    return {
        "closes-before-greeting": [Close()],
        "closes-mid-login": [*login[:2], Close()],
        "bad-greeting": [Send(BAD_GREETING[protocol]), NEVER],
        "refuses-the-login": [*login, Send(BACKEND_REFUSES[protocol]), NEVER],
        "closes-mid-relay": [
            *login,
            Send(BACKEND_LOGGED_IN[protocol]),
            Expect(command),
            Send(answer),
            Close(),
        ],
    }


def expected_backend_failure(protocol: str, name: str, pass_error: bool) -> bytes:
    """The end of the client's transcript (spec §5.0, §5.6)."""
    if name == "closes-mid-relay":
        logged_in = b"235 2.0.0 OK\r\n" if protocol == "smtp" else BACKEND_LOGGED_IN[protocol]
        return logged_in + AFTER_LOGIN[protocol][1]
    if pass_error and name == "bad-greeting":
        return BAD_GREETING[protocol]
    if pass_error and name == "refuses-the-login":
        return BACKEND_REFUSES[protocol]
    return INTERNAL_ERROR[protocol]


BACKEND_FAILURES = ["refuses-connection", *backend_scripts("imap")]


@pytest.mark.parametrize("pass_error", [False, True], ids=["pass-error-off", "pass-error-on"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", BACKEND_FAILURES)
def test_a_backend_failure_gives_nginxs_reply_and_the_proxy_serves_on(
    setup: Setup, name: str, protocol: str, pass_error: bool
) -> None:
    with ExitStack() as stack:
        if name == "refuses-connection":
            port = setup.refusing_port
        else:
            port = stack.enter_context(FakeBackend(backend_scripts(protocol)[name])).port
        server = protocol + ("_pass_error" if pass_error else "")

        def play(proxy: RunningProxy) -> bytes:
            setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, port))
            return log_in(proxy.address(server), protocol, then=AFTER_LOGIN[protocol][0])

        seen = on_both(setup, protocol, play)
    assert seen["mailgate"] == seen["nginx"]
    assert seen["mailgate"].endswith(expected_backend_failure(protocol, name, pass_error) + CLOSED)


# --- the client hangs up ------------------------------------------------------------------------------------


class WatchedBackend(FakeBackend):
    """A FakeBackend that also counts the connections that have ended (closed by the proxy or the script)."""

    def __init__(self, script: list[Step]) -> None:
        super().__init__(script)
        self._ended = 0
        self._changed = threading.Condition()

    def _run(self, connection: socket.socket) -> None:
        try:
            super()._run(connection)
        finally:
            with self._changed:
                self._ended += 1
                self._changed.notify_all()

    def wait_until_all_ended(self, opened: int, timeout: float = IO_TIMEOUT) -> bool:
        """Whether at least `opened` connections were made and every one has ended, within `timeout`."""
        with self._changed:
            return self._changed.wait_for(
                lambda: len(self.received) >= opened and self._ended == len(self.received), timeout
            )


def hang_up(client: LineClient, abruptly: bool) -> None:
    if abruptly:
        client.reset()
    else:
        client.close()


def _before_the_greeting(setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool) -> None:
    hang_up(LineClient(proxy.address(protocol)), abruptly)


def _mid_command(setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool) -> None:
    prelude, command = LOGIN[protocol]
    with LineClient(proxy.address(protocol)) as client:
        client.reply()
        if prelude:
            client.send(prelude)
            client.reply()
        client.send(command[: len(command) // 2])
        hang_up(client, abruptly)


def _after_login_command(setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool) -> None:
    prelude, command = LOGIN[protocol]
    with LineClient(proxy.address(protocol)) as client:
        client.reply()
        if prelude:
            client.send(prelude)
            client.reply()
        client.send(command)
        hang_up(client, abruptly)


def _during_the_auth_request(setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool) -> None:
    backend = WatchedBackend([*BACKEND_LOGIN[protocol], Send(BACKEND_LOGGED_IN[protocol]), Echo()])
    with backend:
        before = len(setup.auth.requests)
        setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, backend.port).delayed(0.5))
        _after_login_command(setup, proxy, protocol, abruptly)
        setup.auth.wait_for_requests(before + 1)
        assert backend.wait_until_all_ended(1), (backend.received, proxy.log_text())


def _during_backend_login(setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool) -> None:
    # The backend stalls after the proxy's first command; the `_short` server's `timeout 2s` bounds the login.
    backend = WatchedBackend([*BACKEND_LOGIN[protocol][:2], NEVER])
    with backend:
        setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, backend.port))
        prelude, command = LOGIN[protocol]
        with LineClient(proxy.address(protocol + "_short")) as client:
            client.reply()
            if prelude:
                client.send(prelude)
                client.reply()
            client.send(command)
            assert wait_until(lambda: backend.received and backend.received[0], IO_TIMEOUT)
            hang_up(client, abruptly)
        assert backend.wait_until_all_ended(1), (backend.received, proxy.log_text())


def _mid_relay(setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool) -> None:
    backend = WatchedBackend([*BACKEND_LOGIN[protocol], Send(BACKEND_LOGGED_IN[protocol]), Echo()])
    with backend:
        setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, backend.port))
        prelude, command = LOGIN[protocol]
        with LineClient(proxy.address(protocol)) as client:
            client.reply()
            if prelude:
                client.send(prelude)
                client.reply()
            client.send(command)
            client.reply()
            client.send(b"echo this\r\n")
            assert client.line() == b"echo this\r\n"
            hang_up(client, abruptly)
        assert backend.wait_until_all_ended(1), (backend.received, proxy.log_text())


def _mid_relay_while_the_backend_streams(
    setup: Setup, proxy: RunningProxy, protocol: str, abruptly: bool
) -> None:
    # The stream starts once relaying (right behind the login reply it would be a too long reply line).
    command = AFTER_LOGIN[protocol][0]
    stream = b"* stream " + b"x" * (16 * 1024 * 1024)
    backend = WatchedBackend(
        [*BACKEND_LOGIN[protocol], Send(BACKEND_LOGGED_IN[protocol]), Expect(command), Send(stream), Echo()]
    )
    with backend:
        setup.auth.respond_with(AuthReply.ok(IPV4_LOOPBACK, backend.port))
        prelude, login = LOGIN[protocol]
        with LineClient(proxy.address(protocol)) as client:
            client.reply()
            if prelude:
                client.send(prelude)
                client.reply()
            client.send(login)
            client.reply()
            client.send(command)
            assert client.exactly(65536) == stream[:65536]
            hang_up(client, abruptly)
        assert backend.wait_until_all_ended(1), (backend.received, proxy.log_text())


PHASES: dict[str, Callable[[Setup, RunningProxy, str, bool], None]] = {
    "before-the-greeting-is-read": _before_the_greeting,
    "mid-command": _mid_command,
    "during-the-auth-request": _during_the_auth_request,
    "during-backend-login": _during_backend_login,
    "mid-relay": _mid_relay,
    "mid-relay-while-the-backend-streams": _mid_relay_while_the_backend_streams,
}


# Every phase with an abrupt hang-up (RST); the phases where a clean close differs for the proxy with both.
HANG_UPS = [(phase, True) for phase in PHASES] + [
    ("before-the-greeting-is-read", False),
    ("mid-relay", False),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("phase", "abruptly"),
    HANG_UPS,
    ids=[f"{phase}-{'reset' if abruptly else 'close'}" for phase, abruptly in HANG_UPS],
)
def test_a_client_hanging_up_ends_its_session_cleanly_and_the_proxy_serves_on(
    setup: Setup, phase: str, abruptly: bool, protocol: str
) -> None:
    for kind in KINDS:
        PHASES[phase](setup, setup.proxies[kind], protocol, abruptly)
        assert_serves(setup.proxies[kind], protocol)
    assert_no_alert(setup.proxies["mailgate"])
