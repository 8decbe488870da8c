import ipaddress
import socket

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailgate.proxy.address import (
    SocketAddress,
    format_ipv6,
    parse_ip_text,
    parse_ipv4_text,
    parse_ipv6_text,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  # first of two equal runs
        ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),  # a single zero word is not compressed
        ("::", "::"),
        ("::1", "::1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::192.0.2.1", "::192.0.2.1"),
        ("::102", "::0.0.1.2"),  # ngx_inet6_ntop: a dotted tail when both last bytes are "large enough"
        ("::201", "::201"),  # ... but not when the last byte is 1
        ("::a", "::a"),  # ... nor when the second-last byte is 0
        ("fe80::1%lo", "fe80::1"),
        ("FE80::A", "fe80::a"),
    ],
)
def test_ipv6_text_is_normalised_as_nginx_prints_it(text: str, expected: str) -> None:
    assert SocketAddress(socket.AF_INET6, text, 1).host == expected


@given(st.binary(min_size=16, max_size=16))
def test_ipv6_formatting_parses_back_and_matches_rfc5952_outside_nginx_quirks(packed: bytes) -> None:
    text = format_ipv6(packed)
    assert parse_ipv6_text(text.encode()) == packed
    assert socket.inet_pton(socket.AF_INET6, text) == packed
    assume(not packed.startswith(bytes(10)))  # nginx's dotted-tail forms differ from Python's
    assert text == str(ipaddress.IPv6Address(packed))


@given(st.binary(min_size=4, max_size=4))
def test_ipv4_formatting_parses_back(packed: bytes) -> None:
    assume(packed != b"\xff\xff\xff\xff")
    text = ".".join(str(octet) for octet in packed)
    assert parse_ipv4_text(text.encode()) == packed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"192.0.2.1", "192.0.2.1"),
        (b"192.000.02.1", "192.0.2.1"),  # leading zeros are decimal, as in ngx_inet_addr
        (b"1..2.3", "1.0.2.3"),  # an empty octet is zero in ngx_inet_addr
        (b"2001:DB8::0:1", "2001:db8::1"),
        (b":1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),  # ngx_inet6_addr skips one leading colon
        (b"::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        (b"1::2.3.4.5", "1::203:405"),
    ],
)
def test_address_text_is_accepted_as_nginx_accepts_it(text: bytes, expected: str) -> None:
    address = parse_ip_text(text, 25)
    assert address is not None
    assert (address.host, address.port) == (expected, 25)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"255.255.255.255",  # INADDR_NONE, refused by ngx_parse_addr
        b"1.2.3",
        b"1.2.3.4.5",
        b"256.1.1.1",
        b"1:2:3:4:5:6:7:8:9",
        b"1:2:3:4:5:6:7",
        b"1::2::3",
        b"12345::",
        b"::g",
        b"1.2.3.4:80",
        b":",
        b"::1.2.3",
    ],
)
def test_address_text_nginx_refuses_is_refused(text: bytes) -> None:
    assert parse_ip_text(text, 1) is None


@given(st.binary(max_size=60))
def test_address_text_parsers_never_raise(text: bytes) -> None:
    address = parse_ip_text(text, 0)
    assert address is None or address.is_ip


def test_socket_address_texts() -> None:
    ipv4 = SocketAddress.from_sockname(socket.AF_INET, ("192.0.2.1", 993))
    ipv6 = SocketAddress.from_sockname(socket.AF_INET6, ("2001:db8::1", 143, 0, 0))
    unix = SocketAddress.from_sockname(socket.AF_UNIX, "")
    assert (ipv4.text, str(ipv4)) == ("192.0.2.1", "192.0.2.1:993")
    assert (ipv6.text, str(ipv6)) == ("2001:db8::1", "[2001:db8::1]:143")
    assert (unix.text, str(unix), unix.is_ip) == ("unix:", "unix:", False)
    assert SocketAddress.from_sockname(socket.AF_UNIX, b"/run/mail.sock").text == "unix:/run/mail.sock"


@pytest.mark.parametrize(
    ("family", "host", "port"),
    [(socket.AF_INET, "192.0.2", 1), (socket.AF_INET6, "1.2.3.4", 1), (socket.AF_INET, "1.2.3.4", 70000)],
)
def test_socket_address_refuses_invalid_values(family: socket.AddressFamily, host: str, port: int) -> None:
    with pytest.raises(ValueError, match="invalid"):
        SocketAddress(family, host, port)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.255", "0.0.0.0", "255.255.255.254", "192.168.1.10"])
def test_an_ipv4_address_from_the_kernel_is_the_same_as_one_normalised(host: str) -> None:
    import socket

    from mailgate.proxy.address import SocketAddress

    assert SocketAddress.from_sockname(socket.AF_INET, (host, 143)) == SocketAddress(
        socket.AF_INET, host, 143
    )
    assert str(SocketAddress.from_sockname(socket.AF_INET, (host, 143))) == str(
        SocketAddress(socket.AF_INET, host, 143)
    )
