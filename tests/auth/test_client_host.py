"""The SMTP client host lookup (spec §2.4.1) against a fake DNS server on a loopback UDP port."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from mailgate.auth.client_host import ClientHost, ClientHostResolver, LookupMessage
from mailgate.config.model import CoreSettings, LogLevel, Resolver

T = TypeVar("T")
Zone = dict[tuple[str, str], "str | list[str]"]
PTR_V4 = "42.2.0.192.in-addr.arpa."
PTR_V6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."


class FakeDns(asyncio.DatagramProtocol):
    """Answers from `zone`: a list of record texts, or `NXDOMAIN`, `SERVFAIL`, `REFUSED`, `DROP`."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
        self.queries.append(key)
        entry = self.zone.get(key, [])
        if entry == "DROP":
            return
        response = dns.message.make_response(query)
        if isinstance(entry, str):
            response.set_rcode(dns.rcode.from_text(entry))
        elif entry:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, question.rdtype, entry)
            )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def with_fake_dns(zone: Zone, use: Callable[[int, FakeDns], Awaitable[T]]) -> T:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: FakeDns(zone), local_addr=("127.0.0.1", 0)
    )
    try:
        return await use(transport.get_extra_info("sockname")[1], protocol)
    finally:
        transport.close()


def lookup(
    zone: Zone,
    client: str | None = "192.0.2.42",
    *,
    ipv6: bool = True,
    valid: float | None = None,
    repeat: int = 1,
) -> tuple[list[ClientHost], list[tuple[str, str]]]:
    async def use(port: int, server: FakeDns) -> list[ClientHost]:
        settings = Resolver(servers=(("127.0.0.1", port),), valid=valid, ipv6=ipv6)
        resolver = ClientHostResolver(
            CoreSettings("mail.example.com", resolver=settings, resolver_timeout=0.5)
        )
        return [await resolver.lookup(client) for _ in range(repeat)]

    async def run() -> tuple[list[ClientHost], list[tuple[str, str]]]:
        captured: list[FakeDns] = []

        async def capture(port: int, server: FakeDns) -> list[ClientHost]:
            captured.append(server)
            return await use(port, server)

        hosts = await with_fake_dns(zone, capture)
        return hosts, captured[0].queries

    return asyncio.run(run())


def test_matching_forward_lookup_gives_the_ptr_name() -> None:
    hosts, queries = lookup(
        {(PTR_V4, "PTR"): ["client.example.org."], ("client.example.org.", "A"): ["192.0.2.42"]}
    )
    assert hosts == [ClientHost("client.example.org")]
    assert (PTR_V4, "PTR") in queries


def test_ipv6_client_matches_an_aaaa_record() -> None:
    zone: Zone = {(PTR_V6, "PTR"): ["v6.example.org."], ("v6.example.org.", "AAAA"): ["2001:db8::1"]}
    hosts, _ = lookup(zone, "2001:db8::1")
    assert hosts == [ClientHost("v6.example.org")]


def test_forward_lookup_not_leading_back_to_the_client_is_unavailable() -> None:
    hosts, _ = lookup(
        {(PTR_V4, "PTR"): ["client.example.org."], ("client.example.org.", "A"): ["198.51.100.7"]}
    )
    assert hosts == [ClientHost("[UNAVAILABLE]")]


def test_ipv6_off_skips_aaaa_queries() -> None:
    zone: Zone = {(PTR_V4, "PTR"): ["client.example.org."], ("client.example.org.", "A"): ["192.0.2.42"]}
    hosts, queries = lookup(zone, ipv6=False)
    assert hosts == [ClientHost("client.example.org")]
    assert ("client.example.org.", "AAAA") not in queries


def test_missing_ptr_is_unavailable_and_logged_like_nginx() -> None:
    hosts, _ = lookup({(PTR_V4, "PTR"): "NXDOMAIN"})
    assert hosts == [
        ClientHost(
            "[UNAVAILABLE]",
            (
                LookupMessage(
                    LogLevel.ERROR,
                    "192.0.2.42 could not be resolved (3: Host not found)",
                    "in resolving client address",
                ),
            ),
        )
    ]


def test_failing_ptr_is_tempunavail() -> None:
    hosts, _ = lookup({(PTR_V4, "PTR"): "SERVFAIL"})
    assert hosts[0].name == "[TEMPUNAVAIL]"
    assert hosts[0].messages[0].text == "192.0.2.42 could not be resolved (2: Server failure)"
    refused, _ = lookup({(PTR_V4, "PTR"): "REFUSED"})
    assert refused[0].messages[0].text == "192.0.2.42 could not be resolved (5: Operation refused)"


def test_silent_dns_server_times_out_as_tempunavail() -> None:
    hosts, _ = lookup({(PTR_V4, "PTR"): "DROP"})
    assert hosts[0].name == "[TEMPUNAVAIL]"
    assert hosts[0].messages[0].text == "192.0.2.42 could not be resolved (110: Operation timed out)"


def test_forward_failures_name_the_host() -> None:
    missing, _ = lookup(
        {
            (PTR_V4, "PTR"): ["gone.example.org."],
            ("gone.example.org.", "A"): "NXDOMAIN",
            ("gone.example.org.", "AAAA"): "NXDOMAIN",
        }
    )
    assert missing == [
        ClientHost(
            "[UNAVAILABLE]",
            (
                LookupMessage(
                    LogLevel.ERROR,
                    "gone.example.org could not be resolved (3: Host not found)",
                    "in resolving client hostname",
                ),
            ),
        )
    ]
    failing, _ = lookup(
        {
            (PTR_V4, "PTR"): ["bad.example.org."],
            ("bad.example.org.", "A"): "SERVFAIL",
            ("bad.example.org.", "AAAA"): "NXDOMAIN",
        }
    )
    assert failing[0].name == "[TEMPUNAVAIL]"
    assert failing[0].messages[0].text == "bad.example.org could not be resolved (2: Server failure)"


def test_ptr_name_that_could_inject_headers_is_refused() -> None:
    hosts, queries = lookup({(PTR_V4, "PTR"): ["evil\\013\\010Auth-Server:\\03210.0.0.1.example.org."]})
    assert hosts[0].name == "[TEMPUNAVAIL]"
    message = hosts[0].messages[0]
    assert message.level is LogLevel.ERROR
    assert (
        message.text
        == '192.0.2.42 resolved to invalid host name "evil\\r\\nAuth-Server: 10.0.0.1.example.org"'
    )
    assert "\r" not in message.text and "\n" not in message.text
    assert all(kind == "PTR" for _, kind in queries)


def test_ptr_name_with_underscore_is_refused() -> None:
    hosts, _ = lookup({(PTR_V4, "PTR"): ["under_score.example.org."]})
    assert hosts[0].name == "[TEMPUNAVAIL]"


def test_no_resolver_means_unavailable_without_lookups() -> None:
    resolver = ClientHostResolver(CoreSettings("mail.example.com"))
    assert asyncio.run(resolver.lookup("192.0.2.42")) == ClientHost("[UNAVAILABLE]")


def test_unix_socket_client_is_tempunavail_without_lookups() -> None:
    hosts, queries = lookup({}, None)
    assert hosts == [ClientHost("[TEMPUNAVAIL]")]
    assert queries == []


def test_answers_are_cached_for_valid_seconds() -> None:
    zone: Zone = {(PTR_V4, "PTR"): ["client.example.org."], ("client.example.org.", "A"): ["192.0.2.42"]}
    hosts, queries = lookup(zone, valid=300, repeat=2, ipv6=False)
    assert hosts == [ClientHost("client.example.org")] * 2
    assert queries.count((PTR_V4, "PTR")) == 1
    hosts, queries = lookup(zone, valid=0, repeat=2, ipv6=False)
    assert queries.count((PTR_V4, "PTR")) == 2
