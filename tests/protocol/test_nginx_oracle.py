"""The engines against Debian's nginx 1.22 (mail module): the same client bytes, the same reply bytes.

Each transcript is played chunk by chunk against an engine and against nginx; for each chunk nginx must
send exactly the bytes the engine replied. Authentication attempts are rejected by the auth server without
Auth-Wait (nginx then closes), and nginx's Auth-Method/User/Pass must equal the engine's credentials.
Transcripts stay where nginx 1.22 agrees with the spec (docs/quirks.md lists where it does not). A too-long
command fills the buffer exactly: bytes nginx never read would turn its close into a reset that can eat
the reply.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from mailgate.config.model import (
    ImapAuth,
    ImapSettings,
    Pop3Auth,
    Pop3Settings,
    Protocol,
    ServerConfig,
    SmtpAuth,
    SmtpSettings,
    StartTls,
)
from mailgate.protocol.engine import PreAuthEngine
from mailgate.protocol.events import Close
from mailgate.protocol.events import StartTls as StartTlsEvent
from mailgate.protocol.imap import ImapPreAuth
from mailgate.protocol.pop3 import Pop3PreAuth
from mailgate.protocol.smtp import SmtpPreAuth
from tests.protocol.driver import SERVER_NAME, Session, credentials, replies, server_config
from tests.support.authserver import AuthReply, AuthServer
from tests.support.loopback import IPV4_LOOPBACK, free_port
from tests.support.nginx import nginx_server, require_nginx

pytestmark = pytest.mark.nginx

REJECTION = b"Invalid login"
READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class OracleServer:
    """One `server {}` for nginx and the equivalent configuration for the engine."""

    directives: str
    config: ServerConfig


SERVERS = {
    "imap": OracleServer("protocol imap;", server_config(Protocol.IMAP)),
    "imap_all_on": OracleServer(
        "protocol imap; imap_auth plain login cram-md5 external; imap_capabilities IMAP4rev1 ID;"
        " starttls on;",
        server_config(
            Protocol.IMAP,
            starttls=StartTls.ON,
            imap=ImapSettings(auth=frozenset(ImapAuth), capabilities=("IMAP4rev1", "ID")),
        ),
    ),
    "imap_only": OracleServer(
        "protocol imap; starttls only;", server_config(Protocol.IMAP, starttls=StartTls.ONLY)
    ),
    "imap_small": OracleServer(
        "protocol imap; imap_client_buffer 64;",
        server_config(Protocol.IMAP, imap=ImapSettings(client_buffer=64)),
    ),
    "pop3": OracleServer("protocol pop3;", server_config(Protocol.POP3)),
    "pop3_all_on": OracleServer(
        "protocol pop3; pop3_auth plain apop cram-md5 external; pop3_capabilities TOP USER; starttls on;",
        server_config(
            Protocol.POP3,
            starttls=StartTls.ON,
            pop3=Pop3Settings(auth=frozenset(Pop3Auth), capabilities=("TOP", "USER")),
        ),
    ),
    "pop3_only": OracleServer(
        "protocol pop3; starttls only;", server_config(Protocol.POP3, starttls=StartTls.ONLY)
    ),
    "smtp": OracleServer("protocol smtp;", server_config(Protocol.SMTP)),
    "smtp_all_on": OracleServer(
        'protocol smtp; smtp_auth plain login cram-md5 external none; smtp_capabilities "SIZE 100" 8BITMIME;'
        " starttls on;",
        server_config(
            Protocol.SMTP,
            starttls=StartTls.ON,
            smtp=SmtpSettings(auth=frozenset(SmtpAuth), capabilities=("SIZE 100", "8BITMIME")),
        ),
    ),
    "smtp_none_only": OracleServer(
        "protocol smtp; smtp_auth none; smtp_capabilities A B; starttls only;",
        server_config(
            Protocol.SMTP,
            starttls=StartTls.ONLY,
            smtp=SmtpSettings(auth=frozenset({SmtpAuth.NONE}), capabilities=("A", "B")),
        ),
    ),
    "smtp_small": OracleServer(
        "protocol smtp; smtp_client_buffer 64;",
        server_config(Protocol.SMTP, smtp=SmtpSettings(client_buffer=64)),
    ),
}

TRANSCRIPTS: list[tuple[str, tuple[bytes, ...]]] = [
    ("imap", (b"a CAPABILITY\r\nb NOOP\r\n", b"c LOGIN {3}\r\n", b'abc "p w"\r\n')),
    (
        "imap",
        (
            b"a" * 32 + b" NOOP\r\n",
            b"a" * 33 + b" NOOP\r\n",
            b"* NOOP\r\n",
            b"a\r\n",
            b"a \r\n",
            b"x  noop y\r\n",
        ),
    ),
    (
        "imap",
        (
            b"a LOGIN a b c d\r\n",
            b"a LOGIN a b c\r\n",
            b"a LOGIN a\r\n",
            b'a LOGIN "" b\r\n',
            b"a LOGOUT\r\n",
        ),
    ),
    ("imap", (b"a NOOP\rX\r\n", b"a NOOP\n", b"a CAPABILITY\n", b"\r\n", b"\n")),
    ("imap", (b"a FOO {3+}\r\n",)),
    ("imap", (b"x a+}\r\n",)),
    ("imap", (b"a AUTHENTICATE PLAIN\r\n", b"*\r\n", b"a AUTHENTICATE CRAM-MD5\r\n", b"a AUTHENTICATE\r\n")),
    ("imap", (b'a LOGIN "u\\"s" "p a\\\\ss"\r\n',)),
    ("imap", (b"x\r\n",) * 5),
    ("imap", (b"x\r\n", b"a LOGIN x\r\n", b"a STARTTLS\r\n", b"y\r\n", b"y\r\n", b"y\r\n", b"y\r\n")),
    ("imap", (b"a LOGIN {1}\r", b"\n", b"x", b" y", b"\r", b"\n")),
    ("imap", (b"a LOGIN a b c {1}\r\n", b'b LOGIN "a"b c\r\n', b"c LOGIN x{1} y\r\n")),
    ("imap", (b"a AUTHENTICATE PLAIN\r\n", b"a b c d\r\n", b"a AUTHENTICATE PLAIN\r\n", b" AHUAcA==\r\n")),
    ("imap", (b"a AUTHENTICATE LOGIN\r\nYQ==\r\n", b"Yg==\r\n")),
    ("imap", (b"t1 authenticate plain AHUAcA==\r\n",)),
    ("imap", (b"a LOGIN {3}\r\nabc {2+}\r\nde\r\n",)),
    ("imap_small", (b"a LOGIN " + b"x" * 56,)),
    ("imap_small", (b"a NOOP\r\n" * 7 + b"a NOOP", b"  ")),
    ("imap_all_on", (b"a CAPABILITY\r\n", b"b AUTHENTICATE EXTERNAL\r\n", b"Ym9i\r\n")),
    ("imap_all_on", (b"a CAPABILITY\r\n", b"b STARTTLS\r\nc LOGIN injected x\r\n")),
    ("imap_only", (b"a CAPABILITY\r\n", b"b LOGIN u p\r\n", b"c AUTHENTICATE PLAIN\r\n", b"d LOGOUT\r\n")),
    (
        "pop3",
        (b"CAPA\r\n", b"AUTH\r\n", b"capa x y z\r\n", b"CAPA a b c d\r\n", b"STAT\r\n", b"\r\n", b"QUIT\r\n"),
    ),
    ("pop3", (b"USER  a b  \r\n", b"PASS   my secret \r\n")),
    ("pop3", (b"USER " + b"x" * 123,)),
    ("pop3", (b"NOOP\r\n" * 21 + b"NO",)),
    (
        "pop3",
        (b"PASS x\r\n", b"APOP a b\r\n", b"USER\r\n", b"USER a\r\nAUTH\r\n", b"USER a\r\n", b"PASS b\r\n"),
    ),
    ("pop3", (b"AUTH LOGIN\r\n", b"YQ== extra\r\n", b"Yg==\r\n")),
    (
        "pop3",
        (b"AUTH PLAIN AGE=\r\n", b"AUTH PLAIN YWI=\r\n", b"AUTH PLAIN a b\r\n", b"AUTH PLAIN AGEAYg==\r\n"),
    ),
    ("pop3", (b"x\r\n",) * 5),
    ("pop3_all_on", (b"CAPA\r\n", b"AUTH\r\n", b"USER bob \r\n", b"CAPA\r\n", b"STLS\r\n", b"CAPA\r\n")),
    ("pop3_all_on", (b"APOP bob 0123456789abcdef0123456789abcdef\r\n",)),
    ("pop3_all_on", (b"STLS\r\nUSER injected\r\n",)),
    (
        "pop3_only",
        (b"CAPA\r\n", b"USER a\r\n", b"AUTH\r\n", b"AUTH PLAIN\r\n", b"PASS x\r\n", b"NOOP\r\n", b"QUIT\r\n"),
    ),
    (
        "smtp",
        (b"EHLO x\r\n", b"HELO x\r\n", b"EHLO\r\n", b"EHLO a b\r\n", b"VRFY x\r\n", b"EXPN\r\n", b"HELP\r\n"),
    ),
    ("smtp", (b"DATA\r\n", b"NOOP x\r\n", b"RSET\r\n", b"AUTH\r\n", b"STARTTLS\r\n", b"QUIT\r\n")),
    ("smtp", (b"MAIL FROM:<a>\r\n", b"RCPT TO:<b>\r\n", b"QUIT\r\n")),
    ("smtp", (b"NOOP 1 2 3 4 5 6 7 8 9 10 11\r\n", b"NOOP 1 2 3 4 5 6 7 8 9 10 11 12\r\n")),
    ("smtp", (b"AUTH XOAUTH\r\n", b"AUTH CRAM-MD5\r\n", b"AUTH PLAIN AHUAcA== x\r\n", b"AUTH LOGIN a b\r\n")),
    ("smtp", (b"AUTH PLAIN\r\n", b"\r\n", b"AUTH LOGIN\r\n", b"\r\n", b"\r\n")),
    ("smtp", (b"EHLO x\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\nNOOP\r\n",)),
    ("smtp", (b"DATA\r\n",) * 5),
    ("smtp_small", (b"NOOP\r\n" * 10 + b"NOOP",)),
    ("smtp_all_on", (b"EHLO x\r\n", b"HELO y\r\n", b"AUTH EXTERNAL\r\n", b"dXNlcg==\r\n")),
    ("smtp_all_on", (b"EHLO x\r\n", b"MAIL  FROM:<a>   SIZE=1 \r\n", b"RCPT  To:<b>  X=1 \r\n")),
    ("smtp_all_on", (b"EHLO x\r\n", b"STARTTLS\r\nNOOP\r\n")),
    ("smtp_none_only", (b"EHLO x\r\n", b"AUTH PLAIN AHUAcA==\r\n", b"RCPT TO:<b>\r\n", b"MAIL\r\n")),
    ("smtp_none_only", (b"HELO x\r\n", b"MAIL FROM:<a>\r\n", b"RCPT TO:<b>\r\n")),
]

ENGINES: dict[Protocol, type[ImapPreAuth] | type[Pop3PreAuth] | type[SmtpPreAuth]] = {
    Protocol.IMAP: ImapPreAuth,
    Protocol.POP3: Pop3PreAuth,
    Protocol.SMTP: SmtpPreAuth,
}
SALT = re.compile(rb"<\d+\.\d+@mx\.example>")


@dataclass(frozen=True)
class RunningOracle:
    ports: dict[str, int]
    auth: AuthServer


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOracle]:
    require_nginx()
    prefix = tmp_path_factory.mktemp("nginx-protocol-oracle")
    pem = prefix / "server.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ports = {name: free_port() for name in SERVERS}
    with AuthServer() as auth:
        auth.set_default(AuthReply.error(REJECTION.decode()))
        blocks = "\n".join(
            f"server {{ listen {IPV4_LOOPBACK}:{ports[name]}; server_name {SERVER_NAME}; "
            f"{entry.directives} }}"
            for name, entry in SERVERS.items()
        )
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"events {{}}\nmail {{\n  auth_http {auth.address}/auth;\n"
            f"  ssl_certificate {pem}; ssl_certificate_key {pem};\n{blocks}\n}}\n"
        )
        listening = [(IPV4_LOOPBACK, port) for port in ports.values()]
        with nginx_server(conf, Path(prefix), listening):
            yield RunningOracle(ports, auth)


def _receive(connection: socket.socket, size: int) -> tuple[bytes, bool]:
    """Up to `size` bytes; the flag says nginx closed before (or right at) that size."""
    received = b""
    while len(received) < size:
        chunk = connection.recv(size - len(received))
        if not chunk:
            return received, True
        received += chunk
    return received, False


def _receive_line(connection: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = connection.recv(1)
        if not byte:
            break
        line += byte
    return line


def _closes(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def _engine(server: ServerConfig) -> PreAuthEngine:
    return ENGINES[server.protocol](server, tls_active=False, salt=b"<1.2@mx.example>")


@pytest.mark.parametrize(("name", "chunks"), TRANSCRIPTS)
def test_engine_answers_as_nginx(oracle: RunningOracle, name: str, chunks: tuple[bytes, ...]) -> None:
    server = SERVERS[name].config
    session = Session(_engine(server))
    already_asked = len(oracle.auth.requests)
    with socket.create_connection((IPV4_LOOPBACK, oracle.ports[name]), timeout=READ_TIMEOUT) as connection:
        greeting = session.engine.greeting()
        nginx_greeting = _receive_line(connection)
        assert SALT.sub(b"<salt>", nginx_greeting) == SALT.sub(b"<salt>", greeting)
        for chunk in chunks:
            events = session.send(chunk)
            expected = replies(events)
            attempts = credentials(events)
            if attempts:
                expected += session.engine.auth_failed(REJECTION, None)
            connection.sendall(chunk)
            received, _ = _receive(connection, len(expected))
            assert received == expected, f"after {chunk!r}"
            if attempts or any(isinstance(event, Close | StartTlsEvent) for event in events):
                break
        ended = session.events[-1] if session.events else None
        if isinstance(ended, Close) or credentials(session.events):
            assert _closes(connection), "nginx kept the connection open"
    asked = oracle.auth.requests[already_asked:] if credentials(session.events) else []
    for attempt, request in zip(credentials(session.events), asked, strict=True):
        assert request.header("Auth-Method") == attempt.method.value
        assert urllib.parse.unquote_to_bytes(request.header("Auth-User") or "") == attempt.login
        assert urllib.parse.unquote_to_bytes(request.header("Auth-Pass") or "") == attempt.password
