"""error_log compatibility: a scripted set of sessions, run against Debian's nginx and mailgate on one
configuration (the same auth server and backends), must leave the same session messages at the same levels.

Lines are compared per connection (`*N`), in the order the connections were made; timestamps, pids, ports and
the connection numbers themselves are normalised away (nginx also numbers its auth and upstream connections).
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.oracle.backend import LoginBackend
from tests.support.authserver import AuthReply, AuthRequest, AuthServer
from tests.support.fake_backend import Close, Expect, FakeBackend, Send
from tests.support.loopback import IPV4_LOOPBACK, free_port
from tests.support.mailgate import mailgate_server
from tests.support.nginx import nginx_server, require_nginx

pytestmark = [pytest.mark.nginx, pytest.mark.slow]

CONF = """
events {{}}
mail {{
    auth_http {auth};
    server_name mail.example.com;
    server {{ listen 127.0.0.1:{imap}; protocol imap; }}
    server {{ listen 127.0.0.1:{pop3}; protocol pop3; }}
    server {{ listen 127.0.0.1:{smtp}; protocol smtp; smtp_auth plain login; }}
    server {{ listen 127.0.0.1:{imap_short}; protocol imap; timeout 1s; proxy_timeout 1s; }}
    server {{ listen 127.0.0.1:{imap_noauth}; protocol imap; auth_http 127.0.0.1:{dead}/auth; }}
    server {{
        listen 127.0.0.1:{imap_tls}; protocol imap;
        starttls on; ssl_certificate {certificate}; ssl_certificate_key {key};
    }}
}}
"""
SERVERS = ("imap", "pop3", "smtp", "imap_short", "imap_noauth", "imap_tls")

# Sessions whose lines still differ, and whose code (not this test's owner) gives the message.
KNOWN_DIFFERENCES: dict[str, str] = {}

_LINE = re.compile(
    r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?P<level>[a-z]+)\] \d+#\d+: \*(?P<conn>\d+) (?P<text>.*)$"
)
_PORT = re.compile(r"(127\.0\.0\.1):\d+")


@dataclass
class Peers:
    """What both servers talk to: one auth server and the backends, chosen by the login a session sends."""

    auth: AuthServer
    backends: dict[str, int]
    refusing_port: int  # nothing listens there
    garbage_port: int  # greets with something that is not IMAP
    hanging_up_port: int  # logs in, then closes at the first command
    silent_port: int  # accepts, never says a word


def _decide(peers: Peers, request: AuthRequest) -> AuthReply:
    login = request.header("Auth-User") or ""
    protocol = request.header("Auth-Protocol") or ""
    if login.startswith("reject"):
        return AuthReply.error("Invalid login or password")
    if login.startswith("refused"):
        return AuthReply.ok(IPV4_LOOPBACK, peers.refusing_port)
    if login.startswith("garbage"):
        return AuthReply.ok(IPV4_LOOPBACK, peers.garbage_port)
    if login.startswith("hangup"):
        return AuthReply.ok(IPV4_LOOPBACK, peers.hanging_up_port)
    if login.startswith("silent"):
        return AuthReply.ok(IPV4_LOOPBACK, peers.silent_port)
    return AuthReply.ok(IPV4_LOOPBACK, peers.backends[protocol])


class Client:
    """A line-oriented client of one session."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((IPV4_LOOPBACK, port), timeout=10)
        self._buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed, unanswered: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.line()

    def until_closed(self) -> None:
        try:
            while self.sock.recv(4096):
                pass
        except ConnectionResetError:
            pass  # closed with our unread input still queued
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def _imap_login(client: Client, login: str) -> bytes:
    client.line()
    return client.send(f"a LOGIN {login} secret\r\n".encode())


def imap_logout_before_login(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    client.line()
    client.sock.sendall(b"a LOGOUT\r\n")
    client.until_closed()


def imap_closes_before_login(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    client.line()
    client.close()


def _reset(client: Client) -> None:
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def imap_resets_before_login(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    client.line()
    _reset(client)


def imap_resets_while_proxying(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    assert b"OK" in _imap_login(client, "alice")
    _reset(client)


def imap_proxied_then_client_closes(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    assert b"OK" in _imap_login(client, "alice")
    assert client.send(b"b NOOP\r\n") == b"b NOOP\r\n"
    client.close()


def imap_backend_hangs_up(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    assert b"OK" in _imap_login(client, "hangup")
    client.sock.sendall(b"b NOOP\r\n")
    client.until_closed()


def imap_backend_silent(port: dict[str, int]) -> None:
    client = Client(port["imap_short"])
    _imap_login(client, "silent")
    client.until_closed()


def imap_starttls_then_proxied(port: dict[str, int]) -> None:
    client = Client(port["imap_tls"])
    client.line()
    assert client.send(b"s STARTTLS\r\n").startswith(b"s OK")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client.sock = context.wrap_socket(client.sock)
    assert b"OK" in client.send(b"a LOGIN dave secret\r\n")
    client.close()


def imap_rejected(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    _imap_login(client, "reject")
    client.until_closed()


def imap_backend_refuses(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    _imap_login(client, "refused")
    client.until_closed()


def imap_backend_speaks_garbage(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    _imap_login(client, "garbage")
    client.until_closed()


def imap_auth_server_down(port: dict[str, int]) -> None:
    client = Client(port["imap_noauth"])
    _imap_login(client, "alice")
    client.until_closed()


def imap_too_many_invalid_commands(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    client.line()
    client.sock.sendall(b"bogus\r\n" * 6)
    client.until_closed()


def imap_too_long_command(port: dict[str, int]) -> None:
    client = Client(port["imap"])
    client.line()
    client.sock.sendall(b"a " + b"x" * 5000 + b"\r\n")
    client.until_closed()


def imap_times_out_before_login(port: dict[str, int]) -> None:
    client = Client(port["imap_short"])
    client.line()
    client.until_closed()


def imap_times_out_while_proxying(port: dict[str, int]) -> None:
    client = Client(port["imap_short"])
    assert b"OK" in _imap_login(client, "alice")
    client.until_closed()


def pop3_proxied(port: dict[str, int]) -> None:
    client = Client(port["pop3"])
    client.line()
    client.send(b"USER bob\r\n")
    assert client.send(b"PASS secret\r\n").startswith(b"+OK")
    client.close()


def pop3_rejected(port: dict[str, int]) -> None:
    client = Client(port["pop3"])
    client.line()
    client.send(b"USER reject\r\n")
    client.sock.sendall(b"PASS secret\r\n")
    client.until_closed()


def smtp_proxied(port: dict[str, int]) -> None:
    client = Client(port["smtp"])
    client.line()
    client.sock.sendall(b"EHLO client.example.org\r\n")
    while not client.line().startswith(b"250 "):
        pass
    assert client.send(b"AUTH PLAIN AGNhcm9sAHNlY3JldA==\r\n").startswith(b"235")
    client.close()


def smtp_rejected(port: dict[str, int]) -> None:
    client = Client(port["smtp"])
    client.line()
    client.sock.sendall(b"EHLO client.example.org\r\n")
    while not client.line().startswith(b"250 "):
        pass
    assert client.send(b"AUTH PLAIN AHJlamVjdABzZWNyZXQ=\r\n").startswith(b"535")
    client.sock.sendall(b"QUIT\r\n")
    client.until_closed()


def smtp_quit_before_login(port: dict[str, int]) -> None:
    client = Client(port["smtp"])
    client.line()
    client.sock.sendall(b"QUIT\r\n")
    client.until_closed()


SESSIONS: list[Callable[[dict[str, int]], None]] = [
    imap_logout_before_login,
    imap_closes_before_login,
    imap_resets_before_login,
    imap_resets_while_proxying,
    imap_proxied_then_client_closes,
    imap_backend_hangs_up,
    imap_backend_silent,
    imap_starttls_then_proxied,
    imap_rejected,
    imap_backend_refuses,
    imap_backend_speaks_garbage,
    imap_auth_server_down,
    imap_too_many_invalid_commands,
    imap_too_long_command,
    imap_times_out_before_login,
    imap_times_out_while_proxying,
    pop3_proxied,
    pop3_rejected,
    smtp_proxied,
    smtp_rejected,
    smtp_quit_before_login,
]


def session_messages(log_text: str) -> list[list[str]]:
    """Each connection's `[level] message` lines, connections in order of their first line."""
    by_connection: dict[str, list[str]] = {}
    for line in log_text.splitlines():
        match = _LINE.match(line)
        if match is not None:
            text = _PORT.sub(r"\1:PORT", match["text"])
            by_connection.setdefault(match["conn"], []).append(f"[{match['level']}] {text}")
    return list(by_connection.values())


@pytest.fixture
def peers(refusing_port: int) -> Iterator[Peers]:
    with ExitStack() as stack:
        backends = {
            protocol: stack.enter_context(LoginBackend(protocol)).port
            for protocol in ("imap", "pop3", "smtp")
        }
        garbage = stack.enter_context(FakeBackend([Send(b"garbage\r\n"), Expect(b"\r\n")]))
        hanging_up = stack.enter_context(
            FakeBackend(
                [
                    Send(b"* OK hi\r\n"),
                    Expect(b"}\r\n"),
                    Send(b"+ go\r\n"),
                    Expect(b"}\r\n"),
                    Send(b"+ go\r\n"),
                    Expect(b"\r\n"),
                    Send(b"a OK in\r\n"),
                    Expect(b"\r\n"),
                    Close(),
                ]
            )
        )
        silent = stack.enter_context(FakeBackend([Expect(b"never sent")]))
        auth = stack.enter_context(AuthServer())
        found = Peers(auth, backends, refusing_port, garbage.port, hanging_up.port, silent.port)
        auth.set_default(lambda request: _decide(found, request))
        yield found


def _play_on_all(session: Callable[[dict[str, int]], None], ports: dict[str, dict[str, int]]) -> None:
    """The session against every target at once (their logs are separate, so they cannot mix)."""
    errors: list[BaseException] = []

    def play(target: str) -> None:
        try:
            session(ports[target])
        except BaseException as error:  # reported below, with the session's name
            errors.append(error)

    threads = [threading.Thread(target=play, args=(target,)) for target in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, f"{session.__name__}: {errors}"


def _quiet(path: Path, seconds: float = 1.0) -> None:
    """Wait until the file has not grown for `seconds` (lines of the last sessions are written)."""
    last = -1
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < seconds:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, stable_since = size, time.monotonic()
        time.sleep(0.1)


def test_session_messages_and_levels_match_nginx(peers: Peers, tmp_path: Path) -> None:
    require_nginx()
    ports = {target: {name: free_port() for name in SERVERS} for target in ("nginx", "mailgate")}
    dead = peers.refusing_port  # as an auth_http port: nothing answers
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com")
    certificate, key = tmp_path / "server.crt", tmp_path / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(certificate))
    leaf.private_key_pem.write_to_path(str(key))
    texts = {
        target: CONF.format(
            auth=peers.auth.url(), dead=dead, certificate=certificate, key=key, **target_ports
        )
        for target, target_ports in ports.items()
    }
    (tmp_path / "nginx").mkdir()
    nginx_conf = tmp_path / "nginx" / "nginx.conf"
    nginx_conf.write_text(texts["nginx"])
    listening = [(IPV4_LOOPBACK, port) for port in ports["nginx"].values()]
    with (
        nginx_server(nginx_conf, tmp_path / "nginx", listening) as nginx,
        mailgate_server(texts["mailgate"], tmp_path / "mailgate", master_process=True) as mailgate,
    ):
        for session in SESSIONS:
            _play_on_all(session, ports)
        _quiet(nginx.error_log)
        _quiet(mailgate.error_log)
        expected = session_messages(nginx.error_log_text())
        got = session_messages(mailgate.error_log_text())
    assert len(expected) == len(SESSIONS)
    assert len(got) == len(expected)
    compared = zip((session.__name__ for session in SESSIONS), expected, got, strict=True)
    differences = {name: (nginx_lines, ours) for name, nginx_lines, ours in compared if ours != nginx_lines}
    unexpected = [
        f"{name}:\n  nginx:    {nginx_lines}\n  mailgate: {ours}"
        for name, (nginx_lines, ours) in differences.items()
        if name not in KNOWN_DIFFERENCES
    ]
    assert not unexpected, "\n".join(unexpected)
    assert set(differences) == set(KNOWN_DIFFERENCES), "a known difference is gone: drop it from the list"
