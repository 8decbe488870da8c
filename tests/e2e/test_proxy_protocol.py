"""PROXY protocol end to end: v1 and v2 headers from clients with realip, and the header towards a backend.

The real client address a load balancer hands over must reach everything downstream: the auth server's
`Client-IP`, Postfix through `XCLIENT ADDR=` (and so the `Received:` line of the delivered mail), and a
backend that asked for a PROXY header of its own. Each case runs against nginx too, on the same file; only
`proxy_protocol v2` towards a backend is newer than Debian's nginx 1.22 and is checked against the spec.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.harness import KINDS, LineClient, ProxyKind, RunningProxy, running_proxy
from tests.support.authserver import AuthRequest, AuthServer
from tests.support.fake_backend import IMAP_LOGIN_THEN_ECHO, FakeBackend
from tests.support.loopback import IPV4_LOOPBACK
from tests.support.mailstore import MailUser, StoredMessage, build_message
from tests.support.postfix import Postfix

pytestmark = pytest.mark.nginx

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT_HELO = "client.example.org"

SERVERS = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;
    set_real_ip_from 127.0.0.0/8;

    server {
        listen 127.0.0.1:$port_imap proxy_protocol;
        protocol imap;
        proxy_protocol on;
    }

    server {
        listen 127.0.0.1:$port_smtp proxy_protocol;
        protocol smtp;
        smtp_auth none;
    }

    server {
        listen 127.0.0.1:$port_pop3_untrusted proxy_protocol;
        protocol pop3;
        set_real_ip_from 192.0.2.0/24;
    }
$mailgate_only}
"""
# nginx 1.22 does not know `proxy_protocol v2` (1.31.4), so this server is in mailgate's file only.
V2_SERVER = """
    server {
        listen 127.0.0.1:$port_imap_v2 proxy_protocol;
        protocol imap;
        proxy_protocol v2;
    }
"""


def template(kind: ProxyKind) -> str:
    return SERVERS.replace("$mailgate_only", V2_SERVER if kind == "mailgate" else "")


@dataclass
class Setup:
    auth: AuthServer
    proxies: dict[ProxyKind, RunningProxy]
    imap_backend: FakeBackend


@pytest.fixture(scope="module")
def setup(postfix: Postfix, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("proxy-protocol")
    with ExitStack() as stack:
        backend = stack.enter_context(FakeBackend(IMAP_LOGIN_THEN_ECHO))
        auth = stack.enter_context(AuthServer())
        auth.route("imap", IPV4_LOOPBACK, backend.port)
        auth.route("smtp", postfix.host, postfix.smtp_port)
        auth.route("pop3", IPV4_LOOPBACK, 9)  # never reached: the tests only look at the request
        proxies = {
            kind: stack.enter_context(
                running_proxy(kind, template(kind), directory / kind, auth_http=auth.url("/auth"))
            )
            for kind in KINDS
        }
        yield Setup(auth, proxies, backend)


def proxy_v2(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    """A v2 PROXY command header over TCP, as HAProxy's `send-proxy-v2` writes it."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source_port, destination_port)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


# name: (the client's PROXY header, the client address and port realip makes of it)
CLIENT_HEADERS: dict[str, tuple[bytes, str, int]] = {
    "v1-tcp4": (b"PROXY TCP4 192.0.2.7 192.0.2.1 40001 143\r\n", "192.0.2.7", 40001),
    "v1-tcp6": (b"PROXY TCP6 2001:DB8:0:0::7 2001:db8::1 40002 143\r\n", "2001:db8::7", 40002),
    "v2-tcp4": (proxy_v2("198.51.100.7", 40003, "203.0.113.1", 143), "198.51.100.7", 40003),
    "v2-tcp6": (proxy_v2("2001:db8::8", 40004, "2001:db8::1", 143), "2001:db8::8", 40004),
}


def new_requests(auth: AuthServer, run: Callable[[], object]) -> list[AuthRequest]:
    before = len(auth.requests)
    run()
    return auth.wait_for_requests(before + 1)[before:]


def imap_login_with_header(setup: Setup, proxy: RunningProxy, server: str, header: bytes) -> bytes:
    """Log in behind `header`; the PROXY header the backend received (its first line, or v2 binary)."""
    connections = len(setup.imap_backend.received)
    with LineClient(proxy.address(server)) as client:
        client.send(header)
        assert client.line() == b"* OK IMAP4 ready\r\n"
        client.send(b"a1 LOGIN alice secret\r\n")
        assert client.line() == b"a1 OK backend logged in\r\n"
        client.send(b"a2 NOOP\r\n")
        assert client.line() == b"a2 NOOP\r\n"  # echoed: the relay runs
    received = setup.imap_backend.received[connections]
    if received.startswith(V2_SIGNATURE):
        return received[: 16 + struct.unpack("!H", received[14:16])[0]]
    return received.split(b"\r\n", 1)[0] + b"\r\n"


@pytest.mark.parametrize("name", CLIENT_HEADERS)
def test_realip_client_address_reaches_the_auth_server_and_the_backends_proxy_header(
    setup: Setup, name: str
) -> None:
    header, client_ip, client_port = CLIENT_HEADERS[name]
    sent: dict[ProxyKind, tuple[str | None, bytes]] = {}
    for kind in KINDS:
        proxy = setup.proxies[kind]
        backend_header = b""

        def run(proxy: RunningProxy = proxy) -> None:
            nonlocal backend_header
            backend_header = imap_login_with_header(setup, proxy, "imap", header)

        (request,) = new_requests(setup.auth, run)
        listen_port = str(proxy.ports["imap"]).encode()
        sent[kind] = (request.header("Client-IP"), backend_header.replace(listen_port, b"LISTEN-PORT"))
    assert sent["mailgate"] == sent["nginx"]
    family = "TCP4" if "." in client_ip else "TCP6"
    line = f"PROXY {family} {client_ip} 127.0.0.1 {client_port} LISTEN-PORT\r\n"
    assert sent["mailgate"] == (client_ip, line.encode())


def test_an_untrusted_peer_keeps_its_own_address_but_the_header_is_reported(setup: Setup) -> None:
    header = b"PROXY TCP4 192.0.2.7 192.0.2.1 40001 110\r\n"
    seen = {}
    for kind in KINDS:

        def run(proxy: RunningProxy = setup.proxies[kind]) -> None:
            with LineClient(proxy.address("pop3_untrusted")) as client:
                client.send(header)
                client.line()
                client.send(b"USER u\r\nPASS p\r\n")
                client.line()
                client.line()

        (request,) = new_requests(setup.auth, run)
        seen[kind] = [(name, value) for name, value in request.headers if name != "Host"]
    assert seen["mailgate"] == seen["nginx"]
    headers = dict(seen["mailgate"])
    assert headers["Client-IP"] == "127.0.0.1"  # 127.0.0.1 is not in this server's set_real_ip_from
    assert (headers["Proxy-Protocol-Addr"], headers["Proxy-Protocol-Port"]) == ("192.0.2.7", "40001")


def _subject_is(subject: str) -> Callable[[StoredMessage], bool]:
    return lambda message: message.header("Subject") == subject


@pytest.mark.parametrize(
    ("name", "received_from"),
    [("v1-tcp4", "[192.0.2.7]"), ("v2-tcp6", "[IPv6:2001:db8::8]")],
)
def test_xclient_hands_postfix_the_real_client_address(
    setup: Setup, postfix: Postfix, mail_user: MailUser, name: str, received_from: str
) -> None:
    header = CLIENT_HEADERS[name][0]
    for kind in KINDS:
        subject = f"proxied {name} via {kind}"
        message = build_message(subject, recipient=mail_user.address)
        with LineClient(setup.proxies[kind].address("smtp")) as client:
            client.send(header)
            assert client.line().startswith(b"220 ")
            for command in (
                f"EHLO {CLIENT_HELO}",
                "MAIL FROM:<sender@example.org>",
                f"RCPT TO:<{mail_user.address}>",
            ):
                client.send(command.encode() + b"\r\n")
                assert client.reply().startswith(b"250"), command
            client.send(b"DATA\r\n")
            assert client.line().startswith(b"354")
            client.send(message + b".\r\n")
            assert client.line().startswith(b"250 2.0.0 Ok: queued")
            client.send(b"QUIT\r\n")
            assert client.line().startswith(b"221")
        delivered = postfix.wait_for_delivery(mail_user, _subject_is(subject))
        assert f"from {CLIENT_HELO} (unknown {received_from})" in (delivered.header("Received") or "")


def test_a_broken_client_header_closes_the_connection_silently_and_is_logged(setup: Setup) -> None:
    for kind in KINDS:
        proxy = setup.proxies[kind]
        mark = proxy.log_mark()
        with LineClient(proxy.address("imap")) as client:
            client.send(b"PROXY TCP4 192.0.2.7 nonsense 1 2\r\n")
            assert client.rest() == b""
        proxy.wait_for_log(mark, 'broken header: "PROXY TCP4 192.0.2.7 nonsense 1 2')


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("name", ["v1-tcp4", "v2-tcp6"])
def test_proxy_protocol_v2_towards_the_backend_carries_the_real_client_and_a_valid_crc(
    setup: Setup, name: str
) -> None:
    header, client_ip, client_port = CLIENT_HEADERS[name]
    proxy = setup.proxies["mailgate"]
    sent = imap_login_with_header(setup, proxy, "imap_v2", header)
    assert sent[:12] == V2_SIGNATURE
    assert sent[12] == 0x21  # version 2, PROXY
    client = ipaddress.ip_address(client_ip)
    if client.version == 4:
        assert sent[13] == 0x11  # TCP over IPv4
        addresses, tlvs = sent[16:28], sent[28:]
        source, destination = ipaddress.ip_address(addresses[:4]), ipaddress.ip_address(addresses[4:8])
    else:
        assert sent[13] == 0x21  # TCP over IPv6: the listener's IPv4 address is written v4-mapped
        addresses, tlvs = sent[16:52], sent[52:]
        source, destination = ipaddress.ip_address(addresses[:16]), ipaddress.ip_address(addresses[16:32])
        assert isinstance(destination, ipaddress.IPv6Address)
        destination = destination.ipv4_mapped or destination
    ports = struct.unpack("!HH", addresses[-4:])
    assert (source, destination, ports) == (
        client,
        ipaddress.ip_address(IPV4_LOOPBACK),
        (client_port, proxy.ports["imap_v2"]),
    )
    # The last TLV is the CRC32C of the whole header computed with its own value zeroed.
    assert tlvs[-7:-4] == b"\x03\x00\x04"
    assert _crc32c(sent[:-4] + bytes(4)) == int.from_bytes(sent[-4:], "big")
