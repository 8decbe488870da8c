"""mailgate-auth: an HTTP auth service for nginx's (and mailgate's) `auth_http`.

Usage:

    mailgate-auth --users /etc/mailgate/users [--routes /etc/mailgate/routes]
                  [--backend imap=10.0.0.5:143 --backend pop3=10.0.0.5:110 --backend smtp=10.0.0.5:25]
                  [--cert-map /etc/mailgate/certificates]
                  [--listen 127.0.0.1:9000 | --listen unix:/run/mailgate-auth.sock]
                  [--auth-key-file /etc/mailgate/auth-key] [--max-wait-attempts 10] [--max-wait 30]
                  [--failure-window 900] [--log-level info]

and in the mail configuration: `auth_http 127.0.0.1:9000;` (plus `auth_http_header X-Auth-Key "..."` when
`--auth-key-file` is used: requests without that header value are refused).

What it answers:

* `plain` logins (LOGIN, USER/PASS, AUTH PLAIN/LOGIN) are checked against the users file (formats and hash
  schemes: `mailgate.auth.directory`, `mailgate.auth.passwords`); the backend comes from the user's own field,
  the routes file or `--backend` (the `default` backend).
* `apop` and `cram-md5` need the plaintext, so they work only for `{PLAIN}` users; the reply then carries
  `Auth-Pass` (nginx needs the real password for the backend). Other users are refused, with a log line.
* `external` (SASL EXTERNAL): the client certificate must have verified (`Auth-SSL-Verify: SUCCESS`, so
  `ssl_verify_client` must be on) and its fingerprint or subject must map to a login in `--cert-map`; an
  authorization identity the client sends must equal that login. IMAP/POP3 backends need a password, so the
  mapped user must be a `{PLAIN}` user there; SMTP needs none.
* `none` (SMTP `smtp_auth none`): the recipient's domain must have a `domain` route with an smtp backend,
  otherwise `554 5.7.1 Relay access denied`.
* A failed login answers `Invalid login or password` (SMTP: `535 5.7.8`) with `Auth-Wait` doubling per recent
  failure of the client address or the login (1, 2, 4 ... up to `--max-wait` seconds, forgotten after
  `--failure-window` seconds). From the `--max-wait-attempts`-th attempt of one connection on, no `Auth-Wait`
  is sent, so the proxy closes the connection, as nginx's documentation advises.
* A login without a backend for its protocol gets `Temporary server problem, try again later` (SMTP
  `451 4.3.0`) and an error-level log line.

Passwords are never logged. The users, routes and certificate files are re-read when they change; a change
that does not parse is logged and the previous contents stay in use.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.auth.directory import (
    CertificateMap,
    DirectoryError,
    Endpoint,
    Routes,
    User,
    WatchedFile,
    parse_certificate_map,
    parse_endpoint,
    parse_routes,
    parse_users,
)
from mailgate.auth.passwords import apop_digest, cram_md5_digest
from mailgate.config.model import Protocol

log = logging.getLogger("mailgate.auth.service")

INVALID_LOGIN = "Invalid login or password"
TEMPORARY_FAILURE = "Temporary server problem, try again later"
_REQUEST_HEAD_LIMIT = 64 * 1024  # an escaped client certificate fits easily
_REQUEST_TIMEOUT = 30.0
_ESCAPED_HEADERS = ("auth-user", "auth-pass", "auth-ssl-cert")
_MAX_TRACKED_KEYS = 100_000

Reply = list[tuple[str, str]]


class BadRequestError(ValueError):
    """The HTTP request is not an auth_http request."""


@dataclass(frozen=True)
class AuthQuery:
    """One auth_http request; header names are lowercase, escaped values already decoded."""

    uri: str
    headers: dict[str, bytes]

    def text(self, name: str) -> str:
        return self.headers.get(name, b"").decode("utf-8", "replace")

    @property
    def method(self) -> str:
        return self.text("auth-method")

    @property
    def login(self) -> str:
        return self.text("auth-user")

    @property
    def password(self) -> bytes:
        return self.headers.get("auth-pass", b"")

    @property
    def protocol(self) -> Protocol | None:
        try:
            return Protocol(self.text("auth-protocol"))
        except ValueError:
            return None

    @property
    def attempt(self) -> int:
        value = self.text("auth-login-attempt")
        return int(value) if value.isdigit() else 1

    @property
    def client(self) -> str:
        return self.text("client-ip")


def parse_auth_query(head: bytes) -> AuthQuery:
    """Read an HTTP/1.x GET request head (request line, headers, empty line)."""
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[0] != b"GET" or not request_line[2].startswith(b"HTTP/1."):
        raise BadRequestError("not a GET request")
    headers: dict[str, bytes] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, separator, value = line.partition(b":")
        if not separator or not name.strip():
            raise BadRequestError("malformed header line")
        key = name.strip().decode("latin-1").lower()
        value = value.strip(b" \t")
        headers[key] = urllib.parse.unquote_to_bytes(value) if key in _ESCAPED_HEADERS else value
    return AuthQuery(request_line[1].decode("latin-1"), headers)


def render_reply(reply: Reply, status: str = "200 OK") -> bytes:
    """The HTTP/1.0 response carrying `reply` as headers. Values must not hold CR or LF."""
    lines = [f"HTTP/1.0 {status}"] + [f"{name}: {value}" for name, value in reply]
    text = "\r\n".join(lines) + "\r\n\r\n"
    if any("\r" in value or "\n" in value for _, value in reply):
        raise ValueError("reply header value with a line break")
    return text.encode()


def _quoted(text: str) -> str:
    """A client-supplied string made safe for one log line."""
    return json.dumps(text, ensure_ascii=True)


@dataclass
class FailureTracker:
    """Recent failed logins per key (client address, login), forgotten after `window` seconds."""

    window: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def record(self, *keys: str) -> int:
        """Count a failure for each key; returns the highest recent count among them."""
        now = self.clock()
        if len(self._failures) > _MAX_TRACKED_KEYS:
            self._forget_expired(now)
        counts = []
        for key in keys:
            recent = [stamp for stamp in self._failures.get(key, []) if now - stamp < self.window]
            recent.append(now)
            self._failures[key] = recent
            counts.append(len(recent))
        return max(counts, default=0)

    def clear(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _forget_expired(self, now: float) -> None:
        for key in [key for key, stamps in self._failures.items() if now - stamps[-1] >= self.window]:
            del self._failures[key]


@dataclass(frozen=True)
class ServiceSettings:
    max_wait_attempts: int = 10
    max_wait: int = 30
    failure_window: float = 900.0
    auth_key: str | None = None


class AuthService:
    """The decisions of mailgate-auth, independent of HTTP."""

    def __init__(
        self,
        users: WatchedFile[dict[str, User]],
        routes: WatchedFile[Routes] | Routes,
        certificates: WatchedFile[CertificateMap] | None = None,
        settings: ServiceSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = users
        self._routes = routes
        self._certificates = certificates
        self.settings = settings or ServiceSettings()
        self.failures = FailureTracker(self.settings.failure_window, clock)

    def _refresh(self) -> tuple[dict[str, User], Routes, CertificateMap]:
        watched: list[WatchedFile[dict[str, User]] | WatchedFile[Routes] | WatchedFile[CertificateMap]]
        watched = [self._users]
        if isinstance(self._routes, WatchedFile):
            watched.append(self._routes)
        if self._certificates is not None:
            watched.append(self._certificates)
        for data_file in watched:
            if data_file.refresh():
                log.info("reloaded %s", data_file.path)
            elif data_file.error:
                log.error("keeping the previous %s: %s", data_file.path, data_file.error)
        routes = self._routes.value if isinstance(self._routes, WatchedFile) else self._routes
        certificates = self._certificates.value if self._certificates else CertificateMap()
        return self._users.value, routes, certificates

    async def answer(self, query: AuthQuery) -> Reply:
        """The reply headers for one auth request."""
        if self.settings.auth_key is not None and not hmac.compare_digest(
            query.headers.get("x-auth-key", b""), self.settings.auth_key.encode()
        ):
            log.error("request from %s without the right X-Auth-Key refused", _quoted(query.client))
            return [("Auth-Status", TEMPORARY_FAILURE), ("Auth-Error-Code", "451 4.3.0")]
        protocol = query.protocol
        if protocol is None:
            log.error("request with unknown Auth-Protocol %s refused", _quoted(query.text("auth-protocol")))
            return [("Auth-Status", TEMPORARY_FAILURE)]
        users, routes, certificates = self._refresh()
        method = query.method
        if method == "none":
            return self._relay(query, routes)
        if method == "external":
            login, problem = self._certificate_login(query, certificates)
        else:
            login, problem = query.login, None
        user = users.get(login)
        backend_password: str | None = None
        if problem is None:
            problem, backend_password = await self._check(method, query, login, user, protocol)
        if problem is not None:
            return self._failed(query, login, protocol, problem)
        backend = routes.endpoint(routes.backend_name(login, user), protocol)
        if backend is None:
            log.error("no %s backend for %s", protocol.value, _quoted(login))
            return self._temporary(protocol)
        self.failures.clear(f"ip:{query.client}", f"user:{login}")
        who = f"{protocol.value} login {_quoted(login)} from {_quoted(query.client)} via {method}"
        log.info("%s: %s:%d", who, backend.address, backend.port)
        reply = [("Auth-Status", "OK"), ("Auth-Server", backend.address), ("Auth-Port", str(backend.port))]
        if method == "external":
            reply.append(("Auth-User", login))
        if backend_password is not None:
            reply.append(("Auth-Pass", backend_password))
        return reply

    async def _check(
        self, method: str, query: AuthQuery, login: str, user: User | None, protocol: Protocol
    ) -> tuple[str | None, str | None]:
        """(why the login fails or None, the password to hand to the backend or None)."""
        if method == "plain":
            if user is None:
                return "unknown user", None
            matches = await asyncio.to_thread(user.password.verify, query.password)
            return (None if matches else "wrong password"), None
        plaintext = user.password.plaintext if user is not None else None
        if method in ("apop", "cram-md5"):
            if user is None:
                return "unknown user", None
            if plaintext is None:
                return f"{method.upper()} needs a {{PLAIN}} password in the users file", None
            salt = query.headers.get("auth-salt", b"")
            expected = (apop_digest if method == "apop" else cram_md5_digest)(salt, plaintext)
            if not hmac.compare_digest(expected.encode(), query.password.lower()):
                return "wrong digest", None
            return None, plaintext.decode()
        if method == "external":
            if protocol is Protocol.SMTP:
                return None, None
            if plaintext is None:
                return f"{protocol.value} backend login needs a {{PLAIN}} password in the users file", None
            return None, plaintext.decode()
        return f"unsupported Auth-Method {_quoted(method)}", None

    def _certificate_login(self, query: AuthQuery, certificates: CertificateMap) -> tuple[str, str | None]:
        verify = query.text("auth-ssl-verify")
        if verify != "SUCCESS":
            return query.login, f"client certificate not verified ({_quoted(verify or 'no Auth-SSL-Verify')})"
        mapped = certificates.login_for(query.text("auth-ssl-fingerprint"), query.text("auth-ssl-subject"))
        if mapped is None:
            subject = query.text("auth-ssl-subject")
            return query.login, f"certificate {_quoted(subject)} is not mapped to a login"
        if query.login and query.login != mapped:
            return query.login, f"certificate belongs to {_quoted(mapped)}"
        return mapped, None

    def _failed(self, query: AuthQuery, login: str, protocol: Protocol, problem: str) -> Reply:
        count = self.failures.record(f"ip:{query.client}", f"user:{login}")
        reply: Reply = [("Auth-Status", INVALID_LOGIN)]
        wait = 0
        if query.attempt < self.settings.max_wait_attempts:
            wait = min(2 ** min(count - 1, 30), self.settings.max_wait)
            reply.append(("Auth-Wait", str(wait)))
        if protocol is Protocol.SMTP:
            reply.append(("Auth-Error-Code", "535 5.7.8"))
        who = f"{protocol.value} login {_quoted(login)} from {_quoted(query.client)} via {query.method}"
        details = f"{count} recent failures, attempt {query.attempt}, wait {wait}s"
        log.info("%s failed: %s (%s)", who, problem, details)
        return reply

    def _temporary(self, protocol: Protocol) -> Reply:
        reply: Reply = [("Auth-Status", TEMPORARY_FAILURE)]
        if protocol is Protocol.SMTP:
            reply.append(("Auth-Error-Code", "451 4.3.0"))
        return reply

    def _relay(self, query: AuthQuery, routes: Routes) -> Reply:
        recipient = query.text("auth-smtp-to")
        if "<" in recipient:
            address = recipient.partition("<")[2].partition(">")[0]
        else:
            address = recipient.partition(":")[2]
        domain = address.strip().rpartition("@")[2].lower()
        backend = routes.endpoint(routes.domains.get(domain), Protocol.SMTP) if domain else None
        if backend is None:
            log.info("relay from %s to %s denied", _quoted(query.client), _quoted(recipient))
            return [("Auth-Status", "Relay access denied"), ("Auth-Error-Code", "554 5.7.1")]
        where = f"{backend.address}:{backend.port}"
        log.info("relay from %s to %s: %s", _quoted(query.client), _quoted(address), where)
        return [("Auth-Status", "OK"), ("Auth-Server", backend.address), ("Auth-Port", str(backend.port))]

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one HTTP/1.0 request on a connection, then close it."""
        try:
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            try:
                response = render_reply(await self.answer(parse_auth_query(head)))
            except BadRequestError as error:
                log.warning("bad request: %s", error)
                response = render_reply([("Auth-Status", "Invalid auth request")], "400 Bad Request")
            writer.write(response)
            await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


def _listen_address(text: str) -> tuple[str, int] | str:
    """`unix:/path` → the path; `host:port` or `[v6]:port` → (host, port)."""
    if text.startswith("unix:"):
        return text[len("unix:") :]
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f'expected ADDRESS:PORT or unix:PATH, got "{text}"')
    return host.strip("[]") or "127.0.0.1", int(port)


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate-auth",
        description="HTTP auth service for nginx/mailgate auth_http: checks mail logins against a users file "
        "and tells the proxy which backend to use.",
        epilog="Users file: 'login:{SCHEME}hash[:backend]' per line (Dovecot passwd-file compatible). "
        "Routes file: 'backend NAME imap=IP:PORT ...', 'domain DOMAIN NAME', 'user LOGIN NAME', "
        "'default NAME'. Certificate map: 'LOGIN fingerprint SHA1HEX' or 'LOGIN subject DN'. "
        "Files are re-read when they change.",
    )
    parser.add_argument("--users", required=True, type=Path, help="users file (required)")
    parser.add_argument("--routes", type=Path, help="routes file: backends per user and per domain")
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="PROTO=IP:PORT",
        help="default backend for a protocol (repeatable), e.g. imap=10.0.0.5:143",
    )
    parser.add_argument("--cert-map", type=Path, help="client certificate to login map, for SASL EXTERNAL")
    parser.add_argument(
        "--listen", default="127.0.0.1:9000", type=_listen_address, help="ADDRESS:PORT or unix:PATH"
    )
    parser.add_argument("--auth-key-file", type=Path, help="require this secret in the X-Auth-Key header")
    parser.add_argument(
        "--max-wait-attempts", type=int, default=10, help="no Auth-Wait from this login attempt on"
    )
    parser.add_argument("--max-wait", type=int, default=30, help="longest Auth-Wait in seconds")
    parser.add_argument("--failure-window", type=float, default=900.0, help="seconds a failure is remembered")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def build_service(arguments: argparse.Namespace) -> AuthService:
    """The service the command line describes. Raises DirectoryError or ValueError for the operator."""
    default_backend: dict[Protocol, Endpoint] = {}
    for text in arguments.backend:
        protocol, endpoint = parse_endpoint(text)
        default_backend[protocol] = endpoint
    base = Routes({"default": default_backend}, default="default") if default_backend else Routes()
    routes: WatchedFile[Routes] | Routes = base
    if arguments.routes is not None:
        routes = WatchedFile(arguments.routes, lambda text, path: parse_routes(text, path, base))
    certificates = WatchedFile(arguments.cert_map, parse_certificate_map) if arguments.cert_map else None
    auth_key = arguments.auth_key_file.read_text().strip() if arguments.auth_key_file else None
    settings = ServiceSettings(
        arguments.max_wait_attempts, arguments.max_wait, arguments.failure_window, auth_key
    )
    return AuthService(WatchedFile(arguments.users, parse_users), routes, certificates, settings)


async def serve(service: AuthService, listen: tuple[str, int] | str) -> None:
    """Serve until SIGTERM or SIGINT."""
    if isinstance(listen, str):
        server = await asyncio.start_unix_server(service.handle_connection, listen, limit=_REQUEST_HEAD_LIMIT)
        where = f"unix:{listen}"
    else:
        server = await asyncio.start_server(
            service.handle_connection, listen[0], listen[1], limit=_REQUEST_HEAD_LIMIT
        )
        where = ", ".join(str(sock.getsockname()[:2]) for sock in server.sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    async with server:
        log.info("listening on %s", where)
        await stop.wait()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """The `mailgate-auth` command."""
    arguments = _argument_parser().parse_args(argv)
    logging.basicConfig(
        level=arguments.log_level.upper(),
        format="%(asctime)s [%(levelname)s] mailgate-auth: %(message)s",
        datefmt="%Y/%m/%d %H:%M:%S",
        stream=sys.stderr,
    )
    try:
        service = build_service(arguments)
    except (DirectoryError, ValueError, OSError, UnicodeDecodeError) as error:
        print(f"mailgate-auth: {error}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(service, arguments.listen))
    except OSError as error:
        print(f"mailgate-auth: cannot listen on {arguments.listen}: {error}", file=sys.stderr)
        return 1
    return 0
