"""The two servers under comparison, each with its own auth server and backends, on the same configuration.

A configuration template (``conf/<group>.conf``) is rendered once per target: only ports and file paths
differ. Debian's nginx gets its mail module through ``-g`` (tests/support/nginx.py), so the files are
otherwise identical. A ``$name_ssl`` port is an implicit-TLS (``listen ... ssl``) server.

The auth server answers from the request alone, so sessions need no per-test setup (see ``decide``).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

import trustme

from tests.oracle.backend import LoginBackend
from tests.oracle.transcript import Endpoint
from tests.support.authserver import AuthReply, AuthRequest, AuthServer
from tests.support.loopback import IPV4_LOOPBACK, free_port
from tests.support.mailgate import mailgate_server
from tests.support.nginx import nginx_server

CONF_DIRECTORY = Path(__file__).with_name("conf")
SERVER_NAME = "mail.example.com"
PROTOCOLS = ("imap", "pop3", "smtp")
BACKEND_PASSWORD = "backend-secret"
DEAD_PORT = 1  # nothing listens on 127.0.0.1:1 (the configurations' dead auth_http uses it too)
# Auth-Status texts the auth server uses; sessions expect them in the client's error line.
INVALID_LOGIN = "Invalid login or password"
TEMPORARY_FAILURE = "Temporary server problem, try again later"
_PORT = re.compile(r"\$([a-z0-9]+_[a-z0-9_]+)")


def decide(request: AuthRequest, backends: dict[str, int]) -> AuthReply:
    """The reply a session asks for through the login it sends (or, for `smtp_auth none`, its MAIL FROM).

    ``reject``: error, close. ``retry``: error with ``Auth-Wait: 1``. ``waitzero``: error with
    ``Auth-Wait: 0``. ``tempfail``: error with ``Auth-Error-Code: 451 4.3.0``. ``broken``: a malformed reply
    (internal server error). ``deadbackend``: OK to a port nothing listens on. ``nopass``: OK without
    ``Auth-Pass``. Anything else: OK to this target's backend for the protocol, with
    ``Auth-Pass`` for the methods whose password nginx cannot pass on (apop, cram-md5, external).
    """
    words = f"{request.header('Auth-User')} {request.header('Auth-SMTP-From')}"
    if "reject" in words:
        return AuthReply.error(INVALID_LOGIN)
    if "retry" in words:
        return AuthReply.error(INVALID_LOGIN, wait=1)
    if "tempfail" in words:
        return AuthReply.error(TEMPORARY_FAILURE, error_code="451 4.3.0")
    if "waitzero" in words:
        return AuthReply.error(INVALID_LOGIN, wait=0)
    if "broken" in words:
        return AuthReply.garbage()
    if "deadbackend" in words:
        return AuthReply.ok(IPV4_LOOPBACK, DEAD_PORT)
    protocol = request.header("Auth-Protocol") or ""
    needs_password = request.header("Auth-Method") in ("apop", "cram-md5", "external")
    password = BACKEND_PASSWORD if needs_password and "nopass" not in words else None
    return AuthReply.ok(IPV4_LOOPBACK, backends.get(protocol, 9), password=password)


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    certificate: Path
    certificate_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA(organization_name="mailgate oracle CA")
    leaf = ca.issue_cert(SERVER_NAME, IPV4_LOOPBACK)
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    certificate = directory / "server.crt"
    leaf.cert_chain_pems[0].write_to_path(str(certificate))
    key = directory / "server.key"
    leaf.private_key_pem.write_to_path(str(key))
    return Pki(ca_file, certificate, key)


def port_names(group: str) -> list[str]:
    """The ``$name`` port placeholders of a group's template, in order."""
    names = _PORT.findall((CONF_DIRECTORY / f"{group}.conf").read_text())
    return [name for name in dict.fromkeys(names) if name.split("_")[0] in PROTOCOLS]


def render(group: str, ports: dict[str, int], auth: AuthServer, pki: Pki) -> str:
    template = Template((CONF_DIRECTORY / f"{group}.conf").read_text())
    return template.substitute(
        ports,
        auth_http=auth.url("/auth"),
        certificate=pki.certificate,
        certificate_key=pki.certificate_key,
    )


@dataclass
class Target:
    """One running server (``kind`` "nginx" or "mailgate") for one configuration group."""

    kind: str
    group: str
    ports: dict[str, int]
    auth: AuthServer
    backends: dict[str, LoginBackend]
    pki: Pki
    log: Path

    def endpoint(self, server: str) -> Endpoint:
        return Endpoint(
            IPV4_LOOPBACK,
            self.ports[server],
            implicit_tls=server.endswith("_ssl"),
            tls_context=self.pki.client_context(),
            server_hostname=SERVER_NAME,
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="backslashreplace")
        except FileNotFoundError:
            return ""


@contextmanager
def start_target(kind: str, group: str, directory: Path, pki: Pki) -> Iterator[Target]:
    """Run nginx or mailgate on the group's configuration, with a fresh auth server and backends."""
    with ExitStack() as stack:
        backends = {protocol: stack.enter_context(LoginBackend(protocol)) for protocol in PROTOCOLS}
        backend_ports = {protocol: backend.port for protocol, backend in backends.items()}
        auth = stack.enter_context(AuthServer())
        auth.set_default(lambda request: decide(request, backend_ports))
        ports = {name: free_port() for name in port_names(group)}
        text = render(group, ports, auth, pki)
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "nginx":
            conf_file = directory / "nginx.conf"
            conf_file.write_text(text)
            listening = [(IPV4_LOOPBACK, port) for port in ports.values()]
            running_nginx = stack.enter_context(nginx_server(conf_file, directory, listening))
            log = running_nginx.error_log
        else:
            running_mailgate = stack.enter_context(mailgate_server(text, directory))
            log = running_mailgate.error_log
        yield Target(kind, group, ports, auth, backends, pki, log)
