"""SMTP client host lookup through the `resolver` directive, end to end, against nginx on the same files.

The client's address (127.0.0.1) is looked up in a fake DNS server: PTR, then the forward lookup of that name
must lead back to the client. The result reaches the auth request (`Client-Host`) and the backend
(`XCLIENT ... NAME=`), and failures are logged as nginx logs them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import IO_TIMEOUT, KINDS, LineClient, ProxyKind, RunningProxy, running_proxy
from tests.support.authserver import AuthReply, AuthServer
from tests.support.fake_backend import Echo, Expect, FakeBackend, Send, Step
from tests.support.fake_dns import FakeDns, Zone

PTR = "1.0.0.127.in-addr.arpa."
TEMPLATE = """
events {}
mail {
    server_name mail.example.com;
    auth_http 127.0.0.1:$auth_port/auth;
    resolver 127.0.0.1:$dns_port ipv6=off;
    resolver_timeout 5s;
    server { listen 127.0.0.1:$port_smtp; protocol smtp; }
}
"""
SMTP_BACKEND: list[Step] = [
    Send(b"220 backend ESMTP\r\n"),
    Expect(b"EHLO mail.example.com\r\n"),
    Send(b"250-backend\r\n250 XCLIENT ADDR LOGIN NAME\r\n"),
    Expect(b"\r\n"),
    Send(b"220 backend ESMTP\r\n"),
    Expect(b"EHLO client.example.org\r\n"),
    Send(b"250 backend\r\n"),
    Echo(),
]


def zones() -> dict[str, Zone]:
    return {
        "matching": {(PTR, "PTR"): ["client.test."], ("client.test.", "A"): ["127.0.0.1"]},
        "mismatching": {(PTR, "PTR"): ["elsewhere.test."], ("elsewhere.test.", "A"): ["192.0.2.7"]},
        "no_ptr": {(PTR, "PTR"): "NXDOMAIN"},
        "failing_dns": {(PTR, "PTR"): "SERVFAIL"},
        "invalid_name": {(PTR, "PTR"): ["bad_name.test."], ("bad_name.test.", "A"): ["127.0.0.1"]},
    }


# What one login showed: the Client-Host the auth request carried, the XCLIENT line, the error log.
Observed = tuple[str, bytes, str]
# Per DNS zone, per proxy.
Observations = dict[str, dict[ProxyKind, Observed]]


def login_and_observe(proxy: RunningProxy, auth: AuthServer, backend: FakeBackend) -> Observed:
    """One SMTP AUTH through `proxy`: the Client-Host it reported, the XCLIENT line, and its error log."""
    mark = proxy.log_mark()
    seen = len(auth.requests)
    sessions = len(backend.received)
    with LineClient(proxy.address("smtp"), timeout=IO_TIMEOUT) as client:
        assert client.line().startswith(b"220 mail.example.com")
        client.send(b"EHLO client.example.org\r\n")
        client.reply()
        client.send(b"AUTH PLAIN " + base64.b64encode(b"\0user\0pass") + b"\r\n")
        assert client.line() == b"235 2.0.0 OK\r\n"
        client.send(b"QUIT\r\n")
        assert client.line() == b"QUIT\r\n"  # the echoing backend answers with what it got
    request = auth.wait_for_requests(seen + 1)[seen]
    host = request.header("Client-Host")
    assert host is not None
    xclient = next(line for line in backend.received[sessions].split(b"\r\n") if line.startswith(b"XCLIENT"))
    return host, xclient, proxy.log_since(mark)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observations]:
    results: Observations = {}
    with FakeBackend(SMTP_BACKEND) as backend, AuthServer() as auth:
        auth.set_default(AuthReply.ok("127.0.0.1", backend.port))
        for name, zone in zones().items():
            with FakeDns(zone) as dns:
                results[name] = {}
                for kind in KINDS:
                    directory = tmp_path_factory.mktemp(f"{kind}-{name}")
                    with running_proxy(
                        kind, TEMPLATE, Path(directory), auth_port=auth.port, dns_port=dns.port
                    ) as proxy:
                        results[name][kind] = login_and_observe(proxy, auth, backend)
    yield results


def test_a_ptr_name_that_leads_back_to_the_client_is_its_host(observed: Observations) -> None:
    for kind in KINDS:
        host, xclient, _ = observed["matching"][kind]
        assert host == "client.test", kind
        assert xclient == b"XCLIENT ADDR=127.0.0.1 LOGIN=user NAME=client.test", kind


@pytest.mark.parametrize(("zone", "host"), [("mismatching", "[UNAVAILABLE]"), ("no_ptr", "[UNAVAILABLE]")])
def test_unverifiable_names_are_unavailable_as_in_nginx(observed: Observations, zone: str, host: str) -> None:
    for kind in KINDS:
        reported, xclient, _ = observed[zone][kind]
        assert reported == host, kind
        assert xclient.endswith(b" NAME=" + host.encode()), kind


def test_a_failing_dns_server_makes_the_host_temporarily_unavailable(observed: Observations) -> None:
    for kind in KINDS:
        assert observed["failing_dns"][kind][0] == "[TEMPUNAVAIL]", kind


@pytest.mark.parametrize("zone", ["no_ptr", "failing_dns"])
def test_lookup_failures_are_logged_in_nginxs_words(observed: Observations, zone: str) -> None:
    def resolver_lines(log: str) -> list[str]:
        return [line.split(": *", 1)[1] for line in log.splitlines() if "could not be resolved" in line]

    nginx, mailgate = (resolver_lines(observed[zone][kind][2]) for kind in KINDS)
    assert nginx, "nginx logged no lookup failure"
    assert [_without_connection(line) for line in mailgate] == [_without_connection(line) for line in nginx]


def _without_connection(line: str) -> str:
    """The message without the connection number and the listening port, which differ by proxy."""
    return re.sub(r"server: 127\.0\.0\.1:\d+", "server: 127.0.0.1:PORT", line.split(" ", 1)[1])


def test_a_ptr_name_with_characters_a_host_name_cannot_hold_is_refused(observed: Observations) -> None:
    # nginx 1.29.7 (CVE-2026-28753); Debian's 1.22 carries the fix as a security update.
    logged = {}
    for kind in KINDS:
        host, xclient, log = observed["invalid_name"][kind]
        assert host == "[TEMPUNAVAIL]", kind
        assert xclient.endswith(b" NAME=[TEMPUNAVAIL]"), kind
        lines = [line.split(": *", 1)[1] for line in log.splitlines() if "invalid host name" in line]
        logged[kind] = [_without_connection(line) for line in lines]
    assert logged["mailgate"] == logged["nginx"]
    assert any('127.0.0.1 resolved to invalid host name "bad_name.test"' in line for line in logged["nginx"])
