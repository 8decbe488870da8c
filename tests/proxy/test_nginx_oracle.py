"""Debian's nginx as the oracle: the PROXY header, realip and backend login bytes nginx sends to a scripted
backend are what mailgate's builders and engines produce from the same inputs.

nginx 1.22 predates XCLIENT xtext (1.29.2), the IMAP untagged line (1.27.3) and PROXY v2 to backends
(1.31.4), so the scenarios avoid those; the unit tests pin them from the spec.
"""

import base64
import ipaddress
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailgate.config.model import LogLevel, Protocol, RealIpSettings
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.proxy.address import SocketAddress
from mailgate.proxy.backend_login import Done, Failed, Send, backend_login_for
from mailgate.proxy.proxy_protocol import (
    ProxyHeaderRead,
    apply_realip,
    build_proxy_header_v1,
    read_proxy_header,
)
from tests.proxy.servers import server_config
from tests.support.authserver import AuthServer
from tests.support.loopback import IPV4_LOOPBACK, free_port
from tests.support.nginx import nginx_server

TIMEOUT = 20.0
SERVER_NAME = "mail.example.com"
CLIENT_PROXY_HEADER = b"PROXY TCP6 2001:0DB8:0::0:1 ::1 40000 143\r\n"


@dataclass
class ScriptedBackend:
    """Accepts one connection; reads nginx's PROXY line, sends `replies[0]`, then one reply per line read."""

    replies: list[bytes]
    received_lines: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server((IPV4_LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(TIMEOUT)
        connection, _ = self._listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.settimeout(TIMEOUT)
            self.received_lines.append(lines.readline())
            for reply in self.replies:
                connection.sendall(reply)
                line = lines.readline()
                if not line:
                    return
                self.received_lines.append(line)

    def finish(self) -> None:
        self._thread.join(TIMEOUT)
        self._listener.close()


@dataclass(frozen=True)
class Scenario:
    protocol: Protocol
    client_commands: bytes  # sent by the client after the greeting, up to the authenticating command
    backend_replies: list[bytes]
    credentials: Credentials
    login: bytes
    password: bytes
    client_host: str = ""


SCENARIOS = {
    "imap": Scenario(
        Protocol.IMAP,
        b"a1 LOGIN alice {5}\r\n",  # the rest ("pa ss") follows the server's continuation
        [b"* OK backend ready\r\n", b"+ OK\r\n", b"+ OK\r\n", b"a1 OK Logged in\r\n"],
        Credentials(Protocol.IMAP, AuthMethod.PLAIN, imap_tag=b"a1"),
        b"alice",
        b"pa ss",
    ),
    "imap-rejected": Scenario(
        Protocol.IMAP,
        b"a1 LOGIN alice {5}\r\n",
        [b"* OK backend ready\r\n", b"+ OK\r\n", b"+ OK\r\n", b"a1 NO [AUTHENTICATIONFAILED] failed\r\n"],
        Credentials(Protocol.IMAP, AuthMethod.PLAIN, imap_tag=b"a1"),
        b"alice",
        b"pa ss",
    ),
    "pop3": Scenario(
        Protocol.POP3,
        b"USER bob\r\nPASS secret\r\n",
        [b"+OK backend ready\r\n", b"+OK\r\n", b"+OK Logged in.\r\n"],
        Credentials(Protocol.POP3, AuthMethod.PLAIN),
        b"bob",
        b"secret",
    ),
    "smtp": Scenario(
        Protocol.SMTP,
        b"EHLO client.example.org\r\nAUTH PLAIN " + base64.b64encode(b"\x00alice\x00pass") + b"\r\n",
        [
            b"220 mx ESMTP\r\n",
            b"250-mx\r\n250 XCLIENT ADDR LOGIN NAME\r\n",
            b"220 mx ESMTP\r\n",
            b"250-mx\r\n250 8BITMIME\r\n",
        ],
        Credentials(Protocol.SMTP, AuthMethod.PLAIN, smtp_helo=b"client.example.org", smtp_esmtp=True),
        b"alice",
        b"pass",
        client_host="[UNAVAILABLE]",
    ),
}


def _write_config(tmp_path: Path, protocol: Protocol, port: int, auth: AuthServer) -> Path:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""
events {{}}
mail {{
    server_name {SERVER_NAME};
    auth_http {auth.address}/auth;
    proxy_protocol on;
    set_real_ip_from 127.0.0.1;
    server {{
        listen {IPV4_LOOPBACK}:{port} proxy_protocol;
        protocol {protocol.value};
        smtp_auth plain;
    }}
}}
"""
    )
    return conf


def _read_reply(client: socket.socket, protocol: Protocol) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or (protocol is Protocol.SMTP and data.split(b"\r\n")[-2][3:4] == b"-"):
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@dataclass(frozen=True)
class NginxRun:
    backend: ScriptedBackend
    client_reply: bytes  # what the client got to its authenticating command
    listen_port: int
    client_port: int
    client_ip: str  # the Client-IP header nginx sent to the auth server
    error_log: str


def _run_nginx(tmp_path: Path, scenario: Scenario) -> NginxRun:
    """One client session through nginx, with the PROXY header in front and a scripted backend behind."""
    port = free_port()
    backend = ScriptedBackend(scenario.backend_replies)
    with AuthServer() as auth:
        auth.route(scenario.protocol.value, IPV4_LOOPBACK, backend.port)
        conf = _write_config(tmp_path, scenario.protocol, port, auth)
        with (
            nginx_server(conf, tmp_path, [(IPV4_LOOPBACK, port)]) as nginx,
            socket.create_connection((IPV4_LOOPBACK, port), timeout=TIMEOUT) as client,
        ):
            client.sendall(CLIENT_PROXY_HEADER)
            _read_reply(client, scenario.protocol)  # the greeting
            reply = b""
            for command in scenario.client_commands.splitlines(keepends=True):
                client.sendall(command)
                reply = _read_reply(client, scenario.protocol)
            if scenario.protocol is Protocol.IMAP:
                client.sendall(scenario.password + b"\r\n")  # the literal announced by the LOGIN line
                reply = _read_reply(client, scenario.protocol)
            client_port = client.getsockname()[1]
            client.close()
            backend.finish()
            client_ip = auth.requests[0].header("Client-IP")
            assert client_ip is not None
            return NginxRun(backend, reply, port, client_port, client_ip, nginx.error_log_text())


@pytest.mark.nginx
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_proxy_header_realip_and_backend_login_match_nginx(tmp_path: Path, name: str) -> None:
    scenario = SCENARIOS[name]
    nginx = _run_nginx(tmp_path, scenario)

    read = read_proxy_header(CLIENT_PROXY_HEADER)
    assert isinstance(read, ProxyHeaderRead)
    peer = SocketAddress(socket.AF_INET, IPV4_LOOPBACK, nginx.client_port)
    trusted = RealIpSettings(trusted=(ipaddress.ip_network("127.0.0.1/32"),))
    client = apply_realip(read.header, peer, trusted)
    assert client.text == nginx.client_ip == "2001:db8::1"
    local = SocketAddress(socket.AF_INET, IPV4_LOOPBACK, nginx.listen_port)
    assert nginx.backend.received_lines[0] == build_proxy_header_v1(client, local)

    engine = backend_login_for(
        server_config(scenario.protocol, server_name=SERVER_NAME),
        scenario.credentials,
        login=scenario.login,
        password=scenario.password,
        client_address=client.text,
        client_host=scenario.client_host,
    )
    sent: list[bytes] = []
    last_event: Done | Failed | None = None
    for reply in scenario.backend_replies:
        for event in engine.receive_data(reply):
            if isinstance(event, Send):
                sent.append(event.data)
            else:
                last_event = event
    assert sent == nginx.backend.received_lines[1:]
    assert last_event is not None
    assert last_event.client_bytes == nginx.client_reply
    if isinstance(last_event, Failed):
        assert last_event.log_level is LogLevel.ERROR
        logged = [line for line in nginx.error_log.splitlines() if f"{last_event.log_message} while " in line]
        assert logged and "[error]" in logged[0], nginx.error_log
