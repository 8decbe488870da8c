import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.config.model import ProxyProtocolOut, RealIpSettings
from mailgate.proxy.address import SocketAddress
from mailgate.proxy.crc32c import crc32c
from mailgate.proxy.proxy_protocol import (
    PROXY_HEADER_READ_SIZE,
    V2_SIGNATURE,
    BrokenProxyHeader,
    ProxyHeaderRead,
    ProxyProtocolHeader,
    apply_realip,
    build_proxy_header,
    build_proxy_header_v1,
    build_proxy_header_v2,
    parse_tlvs,
    read_proxy_header,
)
from mailgate.tls.facts import ClientCertificate, TlsFacts

# HAProxy 2.x `send-proxy-v2` in front of a TCP service: 172.19.0.1:42578 -> 172.19.0.3:80, then `GET `.
HAPROXY_V2_CAPTURE = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050") + b"GET "


def _read(data: bytes) -> ProxyHeaderRead:
    result = read_proxy_header(data)
    assert isinstance(result, ProxyHeaderRead), result
    return result


def _broken(data: bytes) -> str:
    result = read_proxy_header(data)
    assert isinstance(result, BrokenProxyHeader), result
    return result.log_message


def _ipv4(host: str, port: int) -> SocketAddress:
    return SocketAddress(socket.AF_INET, host, port)


def _ipv6(host: str, port: int) -> SocketAddress:
    return SocketAddress(socket.AF_INET6, host, port)


UNIX = SocketAddress(socket.AF_UNIX, "")

# --- reading v1 -------------------------------------------------------------------------------------------


def test_v1_header_from_the_haproxy_spec_is_read_and_consumed_up_to_its_crlf() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    result = _read(data)
    assert result.header == ProxyProtocolHeader(1, "192.168.0.1", 56324, "192.168.0.11", 443)
    assert data[result.consumed :] == b"GET / HTTP/1.1\r\n"


def test_v1_addresses_keep_their_text_as_received() -> None:
    result = _read(b"PROXY TCP6 2001:0DB8::0001 ::1 0 65535\r\n")
    assert result.header == ProxyProtocolHeader(1, "2001:0DB8::0001", 0, "::1", 65535)


def test_v1_does_not_check_that_addresses_match_the_protocol_word() -> None:
    assert _read(b"PROXY TCP4 ::1 ::2 1 2\r\n").header.source_addr == "::1"


@pytest.mark.parametrize("data", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN TCP4 1.2.3.4 5.6.7.8 1 2\r\nA001"])
def test_v1_unknown_is_accepted_without_addresses(data: bytes) -> None:
    result = _read(data)
    assert result.header == ProxyProtocolHeader(version=1)
    assert not result.header.has_addresses
    assert result.consumed == data.index(b"\r\n") + 2


@pytest.mark.parametrize(
    ("data", "log_message"),
    [
        (b"", 'broken header: ""'),
        (b"PROXY ", 'broken header: "PROXY "'),
        (b"GET / HTTP/1.0\r\n\r\n", 'broken header: "GET / HTTP/1.0"'),
        (b"a1 LOGIN user pass\r\n", 'broken header: "a1 LOGIN user pass"'),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 'broken header: "PROXY TCP5 1.2.3.4 5.6.7.8 1 2"'),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2"'),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2"'),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2"'),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536"'),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8  2"'),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2"'),
        (b"PROXY TCP4 host.example 5.6.7.8 1 2\r\n", 'broken header: "PROXY TCP4 host.example 5.6.7.8 1 2"'),
        (b"PROXY UNKNOWN", 'broken header: "PROXY UNKNOWN"'),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21", 'broken header: ""'),  # v2 signature but shorter than 16 bytes
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", 'broken header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\\xff"'),
    ],
)
def test_broken_v1_headers_log_nginx_text_up_to_the_first_line_break(data: bytes, log_message: str) -> None:
    assert _broken(data) == log_message


def test_v1_empty_address_text_is_accepted_as_nginx_accepts_it() -> None:
    assert _read(b"PROXY TCP4  5.6.7.8 1 2\r\n").header.source_addr == ""


def test_header_must_be_complete_within_the_first_read_size() -> None:
    padding = b"PROXY UNKNOWN" + b" " * (PROXY_HEADER_READ_SIZE - 13)
    assert isinstance(read_proxy_header(padding + b"\r\n"), BrokenProxyHeader)
    assert _read(padding[:-2] + b"\r\n").consumed == PROXY_HEADER_READ_SIZE


# --- reading v2 -------------------------------------------------------------------------------------------


def test_v2_header_captured_from_haproxy_is_read() -> None:
    result = _read(HAPROXY_V2_CAPTURE)
    assert result.header == ProxyProtocolHeader(2, "172.19.0.1", 42578, "172.19.0.3", 80)
    assert HAPROXY_V2_CAPTURE[result.consumed :] == b"GET "


def test_v2_ipv6_addresses_are_formatted_as_nginx_prints_them() -> None:
    block = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1")
        + (993).to_bytes(2, "big")
        + (143).to_bytes(2, "big")
    )
    header = _read(V2_SIGNATURE + b"\x21\x21" + len(block).to_bytes(2, "big") + block).header
    assert header == ProxyProtocolHeader(2, "2001:db8::1", 993, "::ffff:10.0.0.1", 143)


def test_v2_tlvs_after_the_addresses_are_kept() -> None:
    tlvs = b"\x02\x00\x04mail" + b"\x04\x00\x00" + b"\x20\x00\x05\x01\x00\x00\x00\x00"
    block = bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]) + tlvs
    header = _read(V2_SIGNATURE + b"\x21\x11" + len(block).to_bytes(2, "big") + block).header
    assert header.tlvs == ((0x02, b"mail"), (0x04, b""), (0x20, b"\x01\x00\x00\x00\x00"))


def test_truncated_tlvs_are_kept_up_to_the_last_whole_one() -> None:
    assert parse_tlvs(b"\x02\x00\x01a\x05\x00\x09short") == ((0x02, b"a"),)


@pytest.mark.parametrize(
    ("command_family", "block"),
    [
        (b"\x20\x11", bytes(12)),  # LOCAL
        (b"\x21\x12", bytes(12)),  # UDP over IPv4
        (b"\x21\x00", b""),  # UNSPEC
        (b"\x21\x31", bytes(216)),  # UNIX stream
        (b"\x21\x41", bytes(4)),  # an unknown family
        (b"\x22\x11", bytes(12)),  # an unknown command
    ],
)
def test_v2_local_non_stream_and_non_ip_are_accepted_without_addresses(
    command_family: bytes, block: bytes
) -> None:
    data = V2_SIGNATURE + command_family + len(block).to_bytes(2, "big") + block + b"+OK"
    result = _read(data)
    assert result.header == ProxyProtocolHeader(version=2)
    assert data[result.consumed :] == b"+OK"


@pytest.mark.parametrize(
    ("data", "log_message"),
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "unknown PROXY protocol version: 1"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "unknown PROXY protocol version: 3"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(11), "header is too large"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "header is too short for its address family"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "header is too short for its address family"),
    ],
)
def test_broken_v2_headers_are_refused_with_nginx_log_text(data: bytes, log_message: str) -> None:
    assert _broken(data) == log_message


@given(st.binary(max_size=200))
def test_reading_arbitrary_bytes_never_raises(data: bytes) -> None:
    result = read_proxy_header(data)
    if isinstance(result, ProxyHeaderRead):
        assert 0 < result.consumed <= len(data)


@given(st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE]), st.binary(max_size=120))
def test_reading_header_like_bytes_never_raises(prefix: bytes, rest: bytes) -> None:
    result = read_proxy_header(prefix + rest)
    assert isinstance(result, ProxyHeaderRead | BrokenProxyHeader)


# --- realip -----------------------------------------------------------------------------------------------

TRUST_LOOPBACK = RealIpSettings(
    trusted=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
)
PROXY_HEADER = ProxyProtocolHeader(1, "192.0.2.7", 40000, "198.51.100.1", 993)


def test_realip_replaces_address_and_port_when_the_peer_is_trusted() -> None:
    assert apply_realip(PROXY_HEADER, _ipv4("127.0.0.1", 5000), TRUST_LOOPBACK) == _ipv4("192.0.2.7", 40000)


def test_realip_without_set_real_ip_from_keeps_the_peer() -> None:
    peer = _ipv4("127.0.0.1", 5000)
    assert apply_realip(PROXY_HEADER, peer, RealIpSettings()) == peer


def test_realip_from_an_untrusted_peer_keeps_the_peer() -> None:
    peer = _ipv4("10.1.1.1", 5000)
    assert apply_realip(PROXY_HEADER, peer, TRUST_LOOPBACK) == peer


def test_realip_without_header_addresses_keeps_the_peer() -> None:
    peer = _ipv4("127.0.0.1", 5000)
    assert apply_realip(ProxyProtocolHeader(version=1), peer, TRUST_LOOPBACK) == peer
    assert apply_realip(None, peer, TRUST_LOOPBACK) == peer


def test_realip_matches_ipv4_mapped_peers_against_ipv4_networks() -> None:
    peer = _ipv6("::ffff:127.0.0.1", 5000)
    assert apply_realip(PROXY_HEADER, peer, TRUST_LOOPBACK) == _ipv4("192.0.2.7", 40000)


def test_realip_trusts_unix_peers_only_with_unix_trusted() -> None:
    assert apply_realip(PROXY_HEADER, UNIX, TRUST_LOOPBACK) == UNIX
    assert apply_realip(PROXY_HEADER, UNIX, RealIpSettings(trust_unix=True)) == _ipv4("192.0.2.7", 40000)


def test_realip_renormalises_the_source_text() -> None:
    header = ProxyProtocolHeader(1, "2001:0DB8:0::0:1", 1, "::1", 2)
    client = apply_realip(header, _ipv6("::1", 5000), TRUST_LOOPBACK)
    assert (client.family, client.text, client.port) == (socket.AF_INET6, "2001:db8::1", 1)


@pytest.mark.parametrize("source", ["", "1.2.3", "255.255.255.255", "1:2:3", "::1::2"])
def test_realip_with_an_unparsable_source_keeps_the_peer(source: str) -> None:
    peer = _ipv4("127.0.0.1", 5000)
    assert apply_realip(ProxyProtocolHeader(1, source, 1, "::1", 2), peer, TRUST_LOOPBACK) == peer


def test_realip_uses_a_v2_header_read_from_the_wire() -> None:
    header = _read(HAPROXY_V2_CAPTURE).header
    assert apply_realip(header, _ipv4("127.0.0.2", 1), TRUST_LOOPBACK) == _ipv4("172.19.0.1", 42578)


# --- writing v1 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "local", "expected"),
    [
        (_ipv4("192.0.2.42", 51234), _ipv4("10.0.0.1", 143), b"PROXY TCP4 192.0.2.42 10.0.0.1 51234 143\r\n"),
        (
            _ipv6("2001:db8::42", 1),
            _ipv6("2001:db8::1", 993),
            b"PROXY TCP6 2001:db8::42 2001:db8::1 1 993\r\n",
        ),
        (_ipv6("::ffff:1.2.3.4", 7), _ipv6("::", 25), b"PROXY TCP6 ::ffff:1.2.3.4 :: 7 25\r\n"),
        (_ipv4("192.0.2.42", 2), _ipv6("::1", 110), b"PROXY TCP4 192.0.2.42 ::1 2 110\r\n"),
        (UNIX, UNIX, b"PROXY UNKNOWN\r\n"),
    ],
)
def test_v1_header_written_for_the_backend(
    client: SocketAddress, local: SocketAddress, expected: bytes
) -> None:
    assert build_proxy_header_v1(client, local) == expected
    assert build_proxy_header(ProxyProtocolOut.V1, client, local, None) == expected


def test_no_header_is_written_with_proxy_protocol_off() -> None:
    assert build_proxy_header(ProxyProtocolOut.OFF, UNIX, UNIX, None) is None


@given(st.ip_addresses(), st.ip_addresses(), st.integers(0, 65535), st.integers(0, 65535))
def test_v1_header_written_reads_back(
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    local_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    client_port: int,
    local_port: int,
) -> None:
    client = SocketAddress.from_packed(client_ip.packed, client_port)
    local = SocketAddress.from_packed(local_ip.packed, local_port)
    data = build_proxy_header_v1(client, local)
    result = _read(data + b"* OK")
    assert result.consumed == len(data)
    expected = ProxyProtocolHeader(1, client.text, client_port, local.text, local_port)
    assert result.header == expected


# --- writing v2 -------------------------------------------------------------------------------------------


def _crc_is_valid(header: bytes) -> bool:
    assert header[-7:-4] == b"\x03\x00\x04", "the CRC32C TLV must be last"
    return crc32c(header[:-4] + bytes(4)) == int.from_bytes(header[-4:], "big")


def _addresses(data: bytes) -> tuple[str | None, int | None, str | None, int | None]:
    header = _read(data).header
    assert header.version == 2
    return header.source_addr, header.source_port, header.destination_addr, header.destination_port


def test_v2_header_for_ipv4_without_tls_is_golden() -> None:
    header = build_proxy_header_v2(_ipv4("192.0.2.42", 51234), _ipv4("10.0.0.1", 143), None)
    expected_without_crc = (
        V2_SIGNATURE
        + b"\x21\x11\x00\x13"  # PROXY, TCP over IPv4, 12 address bytes + 7 CRC TLV bytes
        + bytes([192, 0, 2, 42, 10, 0, 0, 1])
        + (51234).to_bytes(2, "big")
        + (143).to_bytes(2, "big")
        + b"\x03\x00\x04"
    )
    assert header[:-4] == expected_without_crc
    assert header.hex() == "0d0a0d0a000d0a515549540a21110013c000022a0a000001c822008f030004" + "eb75818e"
    assert _crc_is_valid(header)


def test_v2_header_promotes_ipv4_to_mapped_ipv6_when_either_side_is_ipv6() -> None:
    header = build_proxy_header_v2(_ipv4("192.0.2.42", 1), _ipv6("2001:db8::1", 2), None)
    assert header[12:16] == b"\x21\x21\x00\x2b"
    assert header[16:32] == socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.42")
    assert _addresses(header) == ("::ffff:192.0.2.42", 1, "2001:db8::1", 2)


def test_v2_header_demotes_two_mapped_addresses_to_ipv4() -> None:
    header = build_proxy_header_v2(_ipv6("::ffff:192.0.2.42", 1), _ipv6("::ffff:10.0.0.1", 2), None)
    assert header[12:16] == b"\x21\x11\x00\x13"
    assert _addresses(header) == ("192.0.2.42", 1, "10.0.0.1", 2)


def test_v2_header_substitutes_loopback_for_a_non_ip_side() -> None:
    header = build_proxy_header_v2(_ipv4("192.0.2.42", 1), UNIX, None)
    assert _addresses(header) == ("192.0.2.42", 1, "127.0.0.1", 0)
    header = build_proxy_header_v2(UNIX, _ipv6("::2", 3), None)
    assert _addresses(header) == ("::1", 0, "::2", 3)


def test_v2_header_without_ip_addresses_is_local_unspec_with_only_the_crc() -> None:
    header = build_proxy_header_v2(UNIX, UNIX, None)
    assert header[12:19] == b"\x20\x00\x00\x07\x03\x00\x04"
    assert len(header) == 23
    assert _crc_is_valid(header)
    assert _read(header).header == ProxyProtocolHeader(version=2)


def _tls(**overrides: object) -> TlsFacts:
    values: dict[str, object] = {
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "server_name": "mail.example.com",
        "alpn": "imap",
        "server_signature_algorithm": "ecdsa-with-SHA256",
        "server_key_algorithm": "EC256",
    }
    values.update(overrides)
    return TlsFacts(**values)  # type: ignore[arg-type]


def _certificate(*, common_name: str | None = "alice", presented: bool = True) -> ClientCertificate:
    return ClientCertificate(
        subject="CN=alice",
        issuer="CN=ca",
        serial="01",
        fingerprint="00" * 20,
        pem=b"",
        common_name=common_name,
        presented_on_this_connection=presented,
    )


def _tlvs_of(header: bytes) -> dict[int, bytes]:
    tlvs = _read(header).header.tlvs
    assert [kind for kind, _ in tlvs][-1] == 0x03
    return dict(tlvs)


def test_v2_header_with_tls_carries_authority_alpn_ssl_and_crc_in_order() -> None:
    header = build_proxy_header_v2(_ipv4("192.0.2.42", 1), _ipv4("10.0.0.1", 2), _tls())
    tlvs = _read(header).header.tlvs
    assert [kind for kind, _ in tlvs] == [0x02, 0x01, 0x20, 0x03]
    assert tlvs[0] == (0x02, b"mail.example.com")
    assert tlvs[1] == (0x01, b"imap")
    ssl_value = tlvs[2][1]
    assert ssl_value[:5] == b"\x01\x00\x00\x00\x01"  # SSL only; verify 1: no client certificate
    assert parse_tlvs(ssl_value[5:]) == (
        (0x21, b"TLSv1.3"),
        (0x23, b"TLS_AES_256_GCM_SHA384"),
        (0x24, b"ecdsa-with-SHA256"),
        (0x25, b"EC256"),
    )
    assert _crc_is_valid(header)


def test_v2_ssl_tlv_reports_a_verified_client_certificate_presented_on_this_connection() -> None:
    tls = _tls(certificate=_certificate(), verify_code=0, server_name=None, alpn=None)
    tlvs = _tlvs_of(build_proxy_header_v2(_ipv4("192.0.2.42", 1), _ipv4("10.0.0.1", 2), tls))
    assert list(tlvs) == [0x20, 0x03]
    assert tlvs[0x20][:5] == b"\x07\x00\x00\x00\x00"
    assert dict(parse_tlvs(tlvs[0x20][5:]))[0x22] == b"alice"


def test_v2_ssl_tlv_reports_a_resumed_unverified_certificate_without_common_name() -> None:
    tls = _tls(certificate=_certificate(common_name=None, presented=False), verify_code=20)
    tlvs = _tlvs_of(build_proxy_header_v2(_ipv4("192.0.2.42", 1), _ipv4("10.0.0.1", 2), tls))
    assert tlvs[0x20][:5] == b"\x05\x00\x00\x00\x14"
    assert 0x22 not in dict(parse_tlvs(tlvs[0x20][5:]))


def test_v2_header_is_chosen_by_proxy_protocol_v2() -> None:
    client, local = _ipv4("192.0.2.42", 1), _ipv4("10.0.0.1", 2)
    assert build_proxy_header(ProxyProtocolOut.V2, client, local, None) == build_proxy_header_v2(
        client, local, None
    )


def test_v2_header_refuses_a_tlv_too_long_for_its_length_field() -> None:
    with pytest.raises(ValueError, match="too long"):
        build_proxy_header_v2(UNIX, UNIX, _tls(server_name="x" * 70000))


def _as_ipv4_if_mapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


@given(
    st.ip_addresses(),
    st.ip_addresses(),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.none() | st.text(min_size=1, max_size=40),
)
def test_v2_header_written_reads_back_with_a_valid_crc(
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    local_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    client_port: int,
    local_port: int,
    server_name: str | None,
) -> None:
    client = SocketAddress.from_packed(client_ip.packed, client_port)
    local = SocketAddress.from_packed(local_ip.packed, local_port)
    tls = None if server_name is None else _tls(server_name=server_name)
    header = build_proxy_header_v2(client, local, tls)
    assert _crc_is_valid(header)
    result = _read(header + b"220 ")
    assert result.consumed == len(header)
    read = result.header
    assert read.source_port == client_port and read.destination_port == local_port
    assert read.source_addr is not None and read.destination_addr is not None
    for text, original in ((read.source_addr, client_ip), (read.destination_addr, local_ip)):
        assert _as_ipv4_if_mapped(ipaddress.ip_address(text)) == _as_ipv4_if_mapped(original)
    if server_name is not None:
        assert dict(read.tlvs)[0x02] == server_name.encode()
