"""Every `listen` parameter has its effect on the real sockets, as `ss` (iproute2) reports them."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.authserver import AuthServer
from tests.support.loopback import free_port, ipv6_loopback_available
from tests.support.mailgate import MAILGATE, RunningMailgate, mailgate_server

SS = "ss"


def ss(*args: str) -> str:
    return subprocess.run([SS, *args], check=True, capture_output=True, text=True).stdout


def listening(port: int) -> list[str]:
    """`ss -ltnmH` lines (with their skmem continuation) of the listening sockets on `port`."""
    text = ss("-ltnmH", f"sport = :{port}")
    return [block.strip() for block in re.split(r"\n(?=LISTEN)", text) if block.strip()]


def greeting(address: tuple[str, int]) -> bytes:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family) as client:
        client.settimeout(10)
        client.connect(address)
        return client.recv(100)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("tuned", "wildcard", "plain", "dual")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[RunningMailgate]:
    dual = (
        f"server {{ listen [::]:{ports['dual']} ipv6only=off; protocol imap; }}"
        if ipv6_loopback_available()
        else ""
    )
    with AuthServer() as auth:
        conf = f"""events {{}}
mail {{
    auth_http {auth.address}/auth;
    server {{
        listen 127.0.0.1:{ports["tuned"]} backlog=17 rcvbuf=96k sndbuf=80k so_keepalive=30m:10s:4;
        protocol imap;
    }}
    server {{ listen {ports["wildcard"]}; protocol imap; }}
    server {{ listen 127.0.0.2:{ports["wildcard"]}; protocol pop3; }}
    server {{ listen 127.0.0.3:{ports["wildcard"]}; protocol smtp; }}
    server {{ listen 127.0.0.1:{ports["plain"]}; protocol pop3; }}
    {dual}
}}
"""
        with mailgate_server(conf, Path(tmp_path_factory.mktemp("listen"))) as running:
            yield running


def test_backlog_rcvbuf_and_sndbuf_are_set_on_the_listening_socket(
    server: RunningMailgate, ports: dict[str, int]
) -> None:
    [line] = listening(ports["tuned"])
    assert line.split()[2] == "17"  # a listening socket's Send-Q is its backlog
    assert "rb196608" in line  # the kernel doubles SO_RCVBUF: 96k -> 192k
    assert "tb163840" in line  # and SO_SNDBUF: 80k -> 160k


def test_so_keepalive_timers_reach_accepted_connections(
    server: RunningMailgate, ports: dict[str, int]
) -> None:
    with socket.create_connection(("127.0.0.1", ports["tuned"]), timeout=10) as client:
        assert client.recv(100) == b"* OK IMAP4 ready\r\n"
        accepted = ss("-tnoH", "state", "established", f"sport = :{ports['tuned']}")
    assert re.search(r"timer:\(keepalive,(29|30)min", accepted), accepted


def test_default_backlog_is_511(server: RunningMailgate, ports: dict[str, int]) -> None:
    [line] = listening(ports["plain"])
    assert line.split()[2] == "511"


def test_specific_addresses_are_served_through_the_wildcard_socket_of_their_port(
    server: RunningMailgate, ports: dict[str, int]
) -> None:
    assert [line.split()[3] for line in listening(ports["wildcard"])] == [f"0.0.0.0:{ports['wildcard']}"]
    # The server is chosen by the address the client connected to, through the one wildcard socket.
    assert greeting(("127.0.0.1", ports["wildcard"])) == b"* OK IMAP4 ready\r\n"
    assert greeting(("127.0.0.2", ports["wildcard"])) == b"+OK POP3 ready\r\n"
    assert greeting(("127.0.0.3", ports["wildcard"])).startswith(b"220 ")


def test_bind_beside_a_wildcard_on_one_port_fails_to_start_as_nginx_does(tmp_path: Path) -> None:
    # Linux lets no specific address listen beside a wildcard on the same port (without SO_REUSEPORT, which
    # nginx's mail module does not use): nginx then fails on the wildcard, and so does mailgate.
    port = free_port()
    conf = tmp_path / "bind.conf"
    conf.write_text(
        "events {}\nmail {\n    auth_http 127.0.0.1:9/auth;\n"
        f"    server {{ listen {port}; protocol imap; }}\n"
        f"    server {{ listen 127.0.0.3:{port} bind; protocol smtp; }}\n}}\n"
    )
    directives = f"daemon off; master_process off; pid {tmp_path}/m.pid; error_log {tmp_path}/e.log;"
    started = subprocess.run(
        [str(MAILGATE), "-p", str(tmp_path), "-c", str(conf), "-g", directives],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 1
    assert f"bind() to 0.0.0.0:{port} failed (98: Address already in use)" in started.stderr
    assert not (tmp_path / "m.pid").exists()


def test_ipv6only_off_takes_ipv4_clients_on_the_ipv6_wildcard(
    server: RunningMailgate, ports: dict[str, int]
) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    assert greeting(("::1", ports["dual"])) == b"* OK IMAP4 ready\r\n"
    assert greeting(("127.0.0.1", ports["dual"])) == b"* OK IMAP4 ready\r\n"
