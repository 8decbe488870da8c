"""Whole mail sessions over TLS: mailgate and Debian's nginx on one configuration, and clients to drive them.

A configuration is a template: `$auth` is the auth_http address, `$pki` the directory of the test PKI
(tests/tls/support.py), `$dir` the server's own directory, and every `listen 127.0.0.1:$name` gets a free port
of its own. `running("mailgate" | "nginx", ...)` renders and starts it with its own recording auth server, so
the same template run on both kinds gives two `Proxy`s whose sessions and auth requests can be compared.

Clients: `Conversation` is a line-level client over a socket that turns TLS on with Python's ssl when told
to (implicit or after STARTTLS); `s_client` runs `openssl s_client` to completion with what the user types.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import IO

from tests.support.authserver import AuthReply, AuthRequest, AuthServer, Responder
from tests.support.loopback import IPV4_LOOPBACK, free_port, wait_until
from tests.support.mailgate import mailgate_server
from tests.support.nginx import nginx_server, require_nginx

KINDS = ("nginx", "mailgate")
SERVER_NAME = "mail.test"
READ_TIMEOUT = 15.0
# What every test auth server answers unless told otherwise: a refusal, so sessions end at authentication.
REFUSAL = "Invalid login or password"
# The greeting of every IMAP server these tests configure (nginx's default).
IMAP_GREETING = b"* OK IMAP4 ready\r\n"

_PORT_PLACEHOLDER = re.compile(r"listen\s+127\.0\.0\.1:\$\{?(\w+)\}?")

MAIL_HEAD = """\
events {
}

mail {
    server_name mail.test;
    auth_http $auth;
    ssl_certificate $pki/server-rsa.crt;
    ssl_certificate_key $pki/server-rsa.key;
    # Debian's nginx 1.22 leaves TLSv1.3 out by default; mailgate follows 1.23.4+.
    ssl_protocols TLSv1.2 TLSv1.3;
"""


def mail_config(body: str) -> str:
    """A whole configuration: the common `mail {` head, then `body` (servers, more directives), then `}`."""
    return MAIL_HEAD + body + "}\n"


@dataclass
class Proxy:
    """One running mailgate or nginx and its auth server."""

    kind: str
    ports: dict[str, int]
    auth: AuthServer
    directory: Path
    error_log: Path

    def port(self, name: str) -> int:
        return self.ports[name]

    def log_text(self) -> str:
        texts = []
        for path in (self.error_log, self.directory / "stderr.log", self.directory / "nginx-stderr.log"):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(encoding="utf-8", errors="backslashreplace"))
        return "".join(texts)

    def new_requests(self, before: int) -> list[AuthRequest]:
        return self.auth.requests[before:]


def port_names(template: str) -> list[str]:
    return list(dict.fromkeys(_PORT_PLACEHOLDER.findall(template)))


def free_ports(names: list[str]) -> dict[str, int]:
    """A different free port for each name (the kernel may hand out a port just probed again)."""
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


@contextlib.contextmanager
def running(
    kind: str,
    template: str,
    pki: Path,
    directory: Path,
    *,
    log_level: str = "info",
    reply: AuthReply | Responder | None = None,
    values: dict[str, object] | None = None,
    master_process: bool = False,
) -> Iterator[Proxy]:
    """Run `kind` on the rendered `template` until the block ends; its auth server answers `reply`.

    `values` fills the template's other placeholders.
    """
    if kind == "nginx":
        require_nginx()
    directory.mkdir(parents=True, exist_ok=True)
    with AuthServer() as auth:
        auth.set_default(reply or AuthReply.error(REFUSAL))
        ports = free_ports(port_names(template))
        text = Template(template).substitute(
            ports, auth=auth.url("/auth"), pki=pki, dir=directory, **(values or {})
        )
        if kind == "mailgate":
            with mailgate_server(
                text, directory, log_level=log_level, master_process=master_process
            ) as mailgate:
                yield Proxy(kind, ports, auth, directory, mailgate.error_log)
        else:
            conf_file = directory / "nginx.conf"
            conf_file.write_text(text)
            listening = [(IPV4_LOOPBACK, port) for port in ports.values()]
            with nginx_server(conf_file, directory, listening) as nginx:
                yield Proxy(kind, ports, auth, directory, nginx.error_log)


@contextlib.contextmanager
def running_both(
    template: str,
    pki: Path,
    directory: Path,
    *,
    reply: AuthReply | Responder | None = None,
    values: dict[str, object] | None = None,
) -> Iterator[dict[str, Proxy]]:
    """nginx and mailgate on the same template, by kind (skips when nginx is not installed)."""
    require_nginx()
    with contextlib.ExitStack() as stack:
        yield {
            kind: stack.enter_context(
                running(kind, template, pki, directory / kind, reply=reply, values=values)
            )
            for kind in KINDS
        }


# ---------------------------------------------------------------------------------------------------------
# Python's ssl as the client


def open_at_client_hello(
    proxy: Proxy, listener: str, mode: str, timeout: float = READ_TIMEOUT
) -> socket.socket:
    """A raw connection to an IMAP `listener` at the point where the server expects a ClientHello:
    at once for implicit TLS, after the greeting and `a STARTTLS` for `mode` "on"."""
    sock = socket.create_connection((IPV4_LOOPBACK, proxy.port(listener)), timeout=timeout)
    if mode == "on":
        received = b""
        while b"a OK" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
            if received.endswith(IMAP_GREETING):
                sock.sendall(b"a STARTTLS\r\n")
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def client_context(
    *,
    certificate: tuple[Path, Path] | None = None,
    version: ssl.TLSVersion | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A client context that does not check the server (these tests are about the server's side)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate is not None:
        context.load_cert_chain(*certificate)
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


@dataclass
class Conversation:
    """A client connection read reply by reply; `received` keeps everything the server sent, in order."""

    sock: socket.socket  # an ssl.SSLSocket once TLS is on
    pending: bytes = b""
    received: list[bytes] = field(default_factory=list)
    closed: bool = False

    @classmethod
    @contextlib.contextmanager
    def open(cls, port: int, tls: ssl.SSLContext | None = None) -> Iterator[Conversation]:
        """Connect (and with `tls`, handshake at once, as for `listen ... ssl`)."""
        conversation = cls(socket.create_connection((IPV4_LOOPBACK, port), timeout=READ_TIMEOUT))
        try:
            if tls is not None:
                conversation.sock = tls.wrap_socket(conversation.sock, server_hostname=SERVER_NAME)
            yield conversation
        finally:
            with contextlib.suppress(OSError):
                conversation.sock.close()

    @property
    def tls(self) -> ssl.SSLSocket | None:
        return self.sock if isinstance(self.sock, ssl.SSLSocket) else None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Handshake on the open connection (after the server accepted STARTTLS/STLS)."""
        assert not self.pending, f"plaintext left unread before the handshake: {self.pending!r}"
        assert self.tls is None, "TLS is already on"
        self.sock = context.wrap_socket(self.sock, server_hostname=SERVER_NAME)

    def _receive(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.pending += chunk
        return True

    def _take(self, end: int) -> bytes:
        data, self.pending = self.pending[:end], self.pending[end:]
        self.received.append(data)
        return data

    def line(self) -> bytes:
        """One line (with its CRLF); what is left if the server closes first."""
        while b"\n" not in self.pending:
            if not self._receive():
                return self._take(len(self.pending))
        return self._take(self.pending.index(b"\n") + 1)

    def until(self, pattern: bytes) -> bytes:
        """Everything up to and including the first line matching the regular expression `pattern`."""
        expression = re.compile(pattern, re.MULTILINE)
        while True:
            match = expression.search(self.pending)
            if match is not None:
                end = self.pending.find(b"\n", match.end())
                if end >= 0:
                    return self._take(end + 1)
            if not self._receive():
                return self._take(len(self.pending))

    def reply(self, protocol: str, tag: bytes = b"") -> bytes:
        """One complete reply: IMAP up to the tagged line (or one line untagged), POP3 one line, SMTP the
        last `NNN ` line."""
        if protocol == "imap" and tag:
            return self.until(rb"^" + re.escape(tag) + rb" ")
        if protocol == "smtp":
            return self.until(rb"^\d{3} ")
        return self.line()

    def multiline(self) -> bytes:
        """A POP3 multi-line reply (status line to the lone dot)."""
        return self.until(rb"^\.\r$")

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        while self._receive():
            pass
        return self._take(len(self.pending))


# ---------------------------------------------------------------------------------------------------------
# openssl s_client


@dataclass(frozen=True)
class SClientRun:
    """What `openssl s_client` printed: `stdout` (with `-brief`, only what the server sent) and `stderr`."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def lines(self) -> list[str]:
        """stdout's lines: with `-brief`, the server's protocol lines after the handshake."""
        return self.stdout.splitlines()

    @property
    def handshake_done(self) -> bool:
        return "CONNECTION ESTABLISHED" in self.stderr or bool(
            re.search(r"Cipher is (?!\(NONE\))", self.output)
        )

    @property
    def reused(self) -> bool:
        return "\nReused, " in self.output

    @property
    def protocol(self) -> str | None:
        match = re.search(r"^\s*Protocol\s*: (\S+)|^Protocol version: (\S+)", self.output, re.MULTILINE)
        return (match.group(1) or match.group(2)) if match else None

    @property
    def cipher(self) -> str | None:
        match = re.search(r"Cipher is (\S+)|^Ciphersuite: (\S+)", self.output, re.MULTILINE)
        return (match.group(1) or match.group(2)) if match else None

    def has_line(self, line: str) -> bool:
        return line in self.output.splitlines()


def s_client(
    port: int,
    *arguments: str | Path,
    typed: bytes = b"",
    after: str | None = None,
    commands: bool = False,
    timeout: float = 30.0,
) -> SClientRun:
    """`openssl s_client -connect ... ARGUMENTS` fed `typed` (LF becomes CRLF), read until the server closes.

    s_client reads what is typed only after its handshake (and its STARTTLS dialogue), then sends it at once;
    `typed` should end with something that makes the server close (LOGOUT, QUIT, or a refused login). With
    `after`, nothing is typed until stdout shows that text (with `-brief`, "\n" is the server's first line):
    Debian's nginx 1.22 may leave a command unanswered that arrives together with the TLS 1.3 Finished of an
    implicit-TLS handshake.

    With `commands`, s_client's command letters work (`R` renegotiates, `Q` quits): no `-ign_eof`, and stdin
    stays open until s_client ends by itself.
    """
    command = ["openssl", "s_client", "-connect", f"{IPV4_LOOPBACK}:{port}", "-crlf"]
    command += [] if commands else ["-ign_eof"]
    command += [str(argument) for argument in arguments]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    outputs: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    pumps = [
        threading.Thread(target=_pump, args=(stream, outputs[name]), daemon=True)
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for pump in pumps:
        pump.start()
    try:
        if after is not None:
            wait_until(
                lambda: after.encode() in b"".join(outputs["stdout"]) or process.poll() is not None, timeout
            )
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(typed)
            process.stdin.flush()
            if not commands:
                process.stdin.close()
        process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        for pump in pumps:
            pump.join(timeout)
    return SClientRun(
        process.returncode,
        b"".join(outputs["stdout"]).decode("utf-8", "replace"),
        b"".join(outputs["stderr"]).decode("utf-8", "replace"),
    )


def _pump(stream: IO[bytes], chunks: list[bytes]) -> None:
    while chunk := os.read(stream.fileno(), 65536):
        chunks.append(chunk)
