"""End-to-end harness: mailgate and Debian's nginx on one configuration; clients that record what they see.

A configuration template is rendered once per proxy with `string.Template`: every `$port_NAME` placeholder
becomes a free loopback port of that proxy (its `ports["NAME"]`), every `$port6_NAME` one free on `::1`
(for `listen [::1]:$port6_NAME`), any other placeholder takes the value the caller gives. So the two proxies
run the same text with only their ports different, against the same auth server and the same backends.

`Tap` sits between a real client (imaplib, curl...) and a proxy and records both byte streams, so the
client-visible transcript of an unmodified client can be compared across the two proxies. `LineClient` is a
plain socket client for scripted sessions and for hanging up at a chosen moment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Literal, Self

import pytest

from tests.support.authserver import AuthReply, AuthRequest
from tests.support.dovecot import Dovecot
from tests.support.loopback import (
    IPV4_LOOPBACK,
    IPV6_LOOPBACK,
    free_port,
    ipv6_loopback_available,
    wait_until,
)
from tests.support.mailgate import mailgate_server
from tests.support.nginx import nginx_server, require_nginx
from tests.support.postfix import Postfix

ProxyKind = Literal["nginx", "mailgate"]
KINDS: tuple[ProxyKind, ...] = ("nginx", "mailgate")
SERVER_NAME = "mail.example.com"
# Generous: two CPU cores are shared by the whole parallel suite.
IO_TIMEOUT = 30.0
_PORT_PLACEHOLDER = re.compile(r"\$port(6?)_([a-z0-9_]+)")
# nginx's APOP / CRAM-MD5 salt `<pid.time@server_name>`: the one thing besides ports that must differ.
_SALT = re.compile(rb"<\d+\.\d+@" + re.escape(SERVER_NAME.encode()) + rb">")
_NORMAL_SALT = b"<R.T@" + SERVER_NAME.encode() + b">"
_CHALLENGE = re.compile(rb"^(\+ |334 )([A-Za-z0-9+/=]+)(\r?\n)", re.MULTILINE)


@dataclass
class RunningProxy:
    """One proxy serving a rendered template: `ports` by placeholder name, its error log."""

    kind: ProxyKind
    ports: dict[str, int]
    error_log: Path
    ipv6_names: frozenset[str] = frozenset()

    def address(self, name: str) -> tuple[str, int]:
        return (IPV6_LOOPBACK if name in self.ipv6_names else IPV4_LOOPBACK), self.ports[name]

    def log_text(self) -> str:
        try:
            return self.error_log.read_text(encoding="utf-8", errors="backslashreplace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """A position in the error log; `log_since(mark)` is what was logged after it."""
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with self.error_log.open("rb") as log:
                log.seek(mark)
                return log.read().decode("utf-8", "backslashreplace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, mark: int, fragment: str, timeout: float = IO_TIMEOUT) -> str:
        """The log since `mark` once it contains `fragment`; AssertionError with the log if it does not."""
        found = wait_until(lambda: fragment in self.log_since(mark), timeout, interval=0.05)
        text = self.log_since(mark)
        assert found, f"{self.kind} did not log {fragment!r}; its log since the mark:\n{text}"
        return text


def render(
    template: str, ports: dict[str, int], ipv6_names: frozenset[str], values: dict[str, object]
) -> str:
    placeholders = {f"port{'6' if name in ipv6_names else ''}_{name}": port for name, port in ports.items()}
    return Template(template).substitute(placeholders, **values)


@contextmanager
def running_proxy(
    kind: ProxyKind,
    template: str,
    directory: Path,
    *,
    master_process: bool = False,
    log_level: str = "info",
    **values: object,
) -> Iterator[RunningProxy]:
    """Run `kind` on `template` (ports allocated here, `values` for the other placeholders) until the end.

    mailgate runs as a single process unless `master_process` (then with the template's worker_processes),
    and logs at `log_level` (nginx at info).
    """
    if kind == "nginx":
        require_nginx()
    found = dict.fromkeys(_PORT_PLACEHOLDER.findall(template))
    ipv6_names = frozenset(name for v6, name in found if v6)
    if ipv6_names and not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback (::1) here")
    ports: dict[str, int] = {}
    for v6, name in found:
        port = 0
        while port == 0 or port in ports.values():  # free_port() may hand out a port twice in a row
            port = free_port(IPV6_LOOPBACK if v6 else IPV4_LOOPBACK)
        ports[name] = port
    text = render(template, ports, ipv6_names, values)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "mailgate":
        with mailgate_server(text, directory, master_process=master_process, log_level=log_level) as mailgate:
            yield RunningProxy(kind, ports, mailgate.error_log, ipv6_names)
        return
    conf_file = directory / "nginx.conf"
    conf_file.write_text(text)
    listening = [
        (IPV6_LOOPBACK if name in ipv6_names else IPV4_LOOPBACK, port) for name, port in ports.items()
    ]
    with nginx_server(conf_file, directory, listening) as nginx:
        yield RunningProxy(kind, ports, nginx.error_log, ipv6_names)


def normalise(data: bytes) -> bytes:
    """`data` with nginx's salt replaced by a fixed text, also inside base64 CRAM-MD5 challenges.

    The salt holds a process id and a time, so it is the one content that differs between two proxies.
    """

    def challenge(match: re.Match[bytes]) -> bytes:
        try:
            decoded = base64.b64decode(match[2], validate=True)
        except binascii.Error:
            return match[0]
        if not _SALT.fullmatch(decoded):
            return match[0]
        return match[1] + b"{base64 " + _NORMAL_SALT + b"}" + match[3]

    return _SALT.sub(_NORMAL_SALT, _CHALLENGE.sub(challenge, data))


# --- the auth server's decisions -------------------------------------------------------------------------

INVALID_LOGIN = "Invalid login or password"
ALIAS_PREFIX = "alias-"
ALIAS_PASSWORD = "alias-password"


def unescape(value: str) -> bytes:
    """An `Auth-User`/`Auth-Pass` value as the client typed it (nginx sends `%XX` for controls, space, %)."""
    return re.sub(rb"%([0-9A-F]{2})", lambda match: bytes([int(match[1], 16)]), value.encode("latin-1"))


@dataclass
class Directory:
    """Auth decisions over the real backends, as a production auth service would make them.

    Routes by `Auth-Protocol` to Dovecot (IMAP, POP3) or Postfix (SMTP). A login starting with `reject` is
    refused with `INVALID_LOGIN`. APOP and CRAM-MD5 digests are checked against the user's password, which
    is then handed over in `Auth-Pass` (nginx forgets digests). SMTP passwords are checked here, since
    XCLIENT LOGIN= makes Postfix trust the login, unless the request carries `X-Backend-Checks: password`
    (a server with `proxy_smtp_auth on`). IMAP and POP3 plain passwords are left to Dovecot, except for
    `alias-<user>` with the password `alias-password`: that login is mapped to the real user and password
    with `Auth-User` and `Auth-Pass`.
    """

    dovecot: Dovecot
    postfix: Postfix | None = None

    def __call__(self, request: AuthRequest) -> AuthReply:
        login = unescape(request.header("Auth-User") or "").decode("latin-1")
        if login.startswith("reject"):
            return AuthReply.error(INVALID_LOGIN)
        protocol = request.header("Auth-Protocol") or ""
        method = request.header("Auth-Method") or ""
        given = unescape(request.header("Auth-Pass") or "")
        aliased = self.dovecot.users.get(login.removeprefix(ALIAS_PREFIX))
        if login.startswith(ALIAS_PREFIX) and aliased is not None:
            if given != ALIAS_PASSWORD.encode():
                return AuthReply.error(INVALID_LOGIN)
            return AuthReply.ok(*self.route(protocol), user=aliased.name, password=aliased.password)
        user = self.dovecot.users.get(login)
        password = None if user is None else user.password.encode("latin-1")
        salt = (request.header("Auth-Salt") or "").encode("latin-1")
        if method == "apop":
            verified = password is not None and hashlib.md5(salt + password).hexdigest().encode() == given
        elif method == "cram-md5":
            expected = None if password is None else hmac.new(password, salt, hashlib.md5).hexdigest()
            verified = expected is not None and expected.encode() == given
        elif protocol == "smtp" and method == "plain":
            backend_checks = request.header("X-Backend-Checks") == "password"
            verified = backend_checks or (password is not None and password == given)
        else:
            verified = True
        if not verified:
            return AuthReply.error(INVALID_LOGIN)
        handed_over = None if method not in ("apop", "cram-md5") else password
        return AuthReply.ok(
            *self.route(protocol), password=None if handed_over is None else handed_over.decode("latin-1")
        )

    def route(self, protocol: str) -> tuple[str, int]:
        if protocol == "imap":
            return self.dovecot.host, self.dovecot.imap_port
        if protocol == "pop3":
            return self.dovecot.host, self.dovecot.pop3_port
        assert self.postfix is not None, "no Postfix for SMTP sessions"
        return self.postfix.host, self.postfix.smtp_port


# --- clients ---------------------------------------------------------------------------------------------


class LineClient:
    """A plain socket client: send bytes, read lines or replies, see the server close."""

    def __init__(self, address: tuple[str, int], timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:  # closed with unread input: a reset, for the client also an end
            return False
        self.buffer += chunk
        return bool(chunk)

    def line(self) -> bytes:
        """The next line with its line ending (b"" if the server closed first; a partial line at EOF)."""
        while b"\n" not in self.buffer:
            if not self._fill():
                data, self.buffer = self.buffer, b""
                return data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def reply(self) -> bytes:
        """One reply: a line, or for SMTP-style `250-` continuations every line up to the final one."""
        data = self.line()
        while re.match(rb"\d{3}-", data.splitlines()[-1] if data else b""):
            more = self.line()
            if not more:
                break
            data += more
        return data

    def until(self, terminator: bytes) -> bytes:
        while terminator not in self.buffer:
            if not self._fill():
                break
        data, found, self.buffer = self.buffer.partition(terminator)
        return data + found

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                break
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        """Hang up abruptly (RST): the proxy sees the client vanish, not a clean close."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()


@dataclass
class TapSession:
    """Both byte streams of one connection through a `Tap`."""

    from_client: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)


class Tap:
    """A recording TCP forwarder in front of `target`, so unmodified clients leave a transcript.

    Each direction is copied as it arrives; an EOF is passed on as a half-close, and a session is done once
    both directions have ended.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server((IPV4_LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self.sessions: list[TapSession] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._listener.close()

    @property
    def address(self) -> tuple[str, int]:
        return IPV4_LOOPBACK, self.port

    def transcripts(self, timeout: float = IO_TIMEOUT) -> list[tuple[bytes, bytes]]:
        """(client → server, server → client) per session, once every session has ended."""
        for session in self.sessions:
            assert session.done.wait(timeout), "a tapped session did not end"
        return [(bytes(s.from_client), bytes(s.to_client)) for s in self.sessions]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            session = TapSession()
            self.sessions.append(session)
            threading.Thread(target=self._serve, args=(client, session), daemon=True).start()

    def _serve(self, client: socket.socket, session: TapSession) -> None:
        try:
            server = socket.create_connection(self.target, timeout=IO_TIMEOUT)
        except OSError:
            client.close()
            session.done.set()
            return
        client.settimeout(IO_TIMEOUT * 4)
        server.settimeout(IO_TIMEOUT * 4)
        pumps = [
            threading.Thread(target=_pump, args=(client, server, session.from_client), daemon=True),
            threading.Thread(target=_pump, args=(server, client, session.to_client), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        client.close()
        server.close()
        session.done.set()


def _pump(source: socket.socket, target: socket.socket, record: bytearray) -> None:
    try:
        while chunk := source.recv(65536):
            record += chunk
            target.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def run_on_both(
    proxies: dict[ProxyKind, RunningProxy], run: Callable[[RunningProxy], object]
) -> dict[ProxyKind, object]:
    """`run` against nginx, then against mailgate (same order every time, so shared state evolves alike)."""
    return {kind: run(proxies[kind]) for kind in KINDS}
