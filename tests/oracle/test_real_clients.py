"""Real clients reach the authentication step: Python's imaplib, poplib and smtplib, and
`openssl s_client` (with `-starttls imap|pop3|smtp`, and with implicit TLS).

Each runs against mailgate and, as the control that the client and configuration are right, against nginx.
"Reached" means the auth server recorded the client's credentials and the client got the backend's login
reply (or SMTP's 235) back through the proxy.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.oracle.runs import Servers
from tests.oracle.targets import SERVER_NAME, Target
from tests.support.authserver import AuthRequest
from tests.support.loopback import IPV4_LOOPBACK, wait_until
from tests.support.nginx import require_nginx

pytestmark = pytest.mark.nginx
KINDS = ["nginx", "mailgate"]
TIMEOUT = 20.0


def target_for(servers: Servers, kind: str, group: str) -> Target:
    if kind == "nginx":
        require_nginx()
    return servers.target(kind, group)


@contextmanager
def new_auth_requests(target: Target) -> Iterator[list[AuthRequest]]:
    """The auth requests that arrive while the block runs (filled in when it ends)."""
    before = len(target.auth.requests)
    found: list[AuthRequest] = []
    yield found
    found.extend(target.auth.requests[before:])


def assert_reached_authentication(requests: list[AuthRequest], protocol: str, *, tls: bool) -> None:
    assert len(requests) == 1, [request.lines for request in requests]
    request = requests[0]
    assert request.header("Auth-Protocol") == protocol
    assert request.header("Auth-User") == "ok"
    assert request.header("Auth-Login-Attempt") == "1"
    assert (request.header("Auth-SSL") == "on") is tls, request.lines


# --- the standard library's clients -------------------------------------------------------------------------


def imap_login(target: Target, server: str, mode: str) -> tuple[str, list[bytes]]:
    endpoint = target.endpoint(server)
    context = target.pki.client_context()
    if mode == "implicit":
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            IPV4_LOOPBACK, endpoint.port, ssl_context=context, timeout=TIMEOUT
        )
    else:
        client = imaplib.IMAP4(IPV4_LOOPBACK, endpoint.port, timeout=TIMEOUT)
        if mode == "starttls":
            client.starttls(context)
    try:
        status, data = client.login("ok", "secret")
        return status, data
    finally:
        client.shutdown()


def pop3_login(target: Target, server: str, mode: str) -> bytes:
    endpoint = target.endpoint(server)
    context = target.pki.client_context()
    if mode == "implicit":
        client: poplib.POP3 = poplib.POP3_SSL(IPV4_LOOPBACK, endpoint.port, context=context, timeout=TIMEOUT)
    else:
        client = poplib.POP3(IPV4_LOOPBACK, endpoint.port, timeout=TIMEOUT)
        if mode == "starttls":
            client.stls(context)
    try:
        client.user("ok")
        return client.pass_("secret")
    finally:
        client.close()


def smtp_login(target: Target, server: str, mode: str) -> tuple[int, bytes]:
    endpoint = target.endpoint(server)
    context = target.pki.client_context()
    if mode == "implicit":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            IPV4_LOOPBACK,
            endpoint.port,
            context=context,
            timeout=TIMEOUT,
            local_hostname="client.example.org",
        )
    else:
        client = smtplib.SMTP(
            IPV4_LOOPBACK, endpoint.port, timeout=TIMEOUT, local_hostname="client.example.org"
        )
        if mode == "starttls":
            client.starttls(context=context)
    try:
        client.ehlo()
        return client.login("ok", "secret")
    finally:
        client.close()


# (group, server, mode) per protocol: plaintext, STARTTLS (`on` and `only`), implicit TLS.
MODES = [
    ("plain", "_plain"),
    ("starttls", "_on"),
    ("starttls", "_only"),
    ("implicit", "_ssl"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("mode", "suffix"), MODES)
def test_imaplib_logs_in_through_the_proxy(servers: Servers, kind: str, mode: str, suffix: str) -> None:
    target = target_for(servers, kind, "imap")
    with new_auth_requests(target) as requests:
        status, data = imap_login(target, "imap" + suffix, mode)
    assert (status, data) == ("OK", [b"backend logged in"])
    assert_reached_authentication(requests, "imap", tls=mode != "plain")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("mode", "suffix"), MODES)
def test_poplib_logs_in_through_the_proxy(servers: Servers, kind: str, mode: str, suffix: str) -> None:
    target = target_for(servers, kind, "pop3")
    with new_auth_requests(target) as requests:
        reply = pop3_login(target, "pop3" + suffix, mode)
    assert reply == b"+OK backend logged in"
    assert_reached_authentication(requests, "pop3", tls=mode != "plain")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("mode", "suffix"), MODES)
def test_smtplib_logs_in_through_the_proxy(servers: Servers, kind: str, mode: str, suffix: str) -> None:
    target = target_for(servers, kind, "smtp")
    with new_auth_requests(target) as requests:
        reply = smtp_login(target, "smtp" + suffix, mode)
    assert reply == (235, b"2.0.0 OK")
    assert_reached_authentication(requests, "smtp", tls=mode != "plain")


# --- openssl s_client ---------------------------------------------------------------------------------------

# What the user types once s_client has the TLS session, and the line that proves the login went through.
S_CLIENT_LOGIN: dict[str, tuple[bytes, bytes]] = {
    "imap": (b"a LOGIN ok secret\n", b"a OK backend logged in"),
    "pop3": (b"USER ok\nPASS secret\n", b"+OK backend logged in"),
    "smtp": (b"AUTH PLAIN AG9rAHNlY3JldA==\n", b"235 2.0.0 OK"),
}


class SClient:
    """`openssl s_client` in the background, its output collected until it is stopped."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 4096):
            with self._lock:
                self.output += chunk

    def seen(self, data: bytes) -> Callable[[], bool]:
        def check() -> bool:
            with self._lock:
                return data in self.output

        return check

    def verified(self) -> bool:
        """Whether the whole server chain (CA and leaf) was verified: the handshake is done."""
        with self._lock:
            return self.output.count(b"verify return:1") >= 2

    def type(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command is not installed")
    return path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_openssl_s_client_reaches_authentication(
    servers: Servers, openssl: str, kind: str, protocol: str, mode: str
) -> None:
    target = target_for(servers, kind, protocol)
    server = protocol + ("_on" if mode == "starttls" else "_ssl")
    argv = [openssl, "s_client", "-connect", f"{IPV4_LOOPBACK}:{target.ports[server]}"]
    argv += [
        "-servername",
        SERVER_NAME,
        "-CAfile",
        str(target.pki.ca_file),
        "-verify_return_error",
        "-crlf",
        "-quiet",
    ]
    if mode == "starttls":
        argv += ["-starttls", protocol]
    login, reply = S_CLIENT_LOGIN[protocol]
    with new_auth_requests(target) as requests:
        client = SClient(argv)
        try:
            # Typed too early, s_client can lose the line; the greeting (implicit TLS) or the verified
            # server certificate (STARTTLS: no new greeting) shows it is ready to send.
            ready = client.seen(b"ready") if mode == "implicit" else client.verified
            assert wait_until(ready, TIMEOUT), client.output
            client.type(login)
            reached = wait_until(client.seen(reply), TIMEOUT)
        finally:
            client.stop()
    assert reached, client.output
    assert_reached_authentication(requests, protocol, tls=True)
