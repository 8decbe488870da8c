"""Addresses as nginx parses them: ngx_parse_url (listen, auth_http, resolver, syslog), CIDRs, host lookups.

Hosts are resolved once, at load, like nginx does; the lookup function can be replaced (tests use a fixed
table so that no test depends on DNS).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.config.values import atoi

UNIX_PATH_MAX = 108  # sizeof(struct sockaddr_un.sun_path) on Linux

HostLookup = Callable[[str], list[tuple[socket.AddressFamily, bytes]]]
"""Resolves a host name to packed addresses, IPv4 first; raises LookupError when the host is unknown."""


def system_lookup(host: str) -> list[tuple[socket.AddressFamily, bytes]]:
    """ngx_inet_resolve_host: getaddrinfo(), every IPv4 address, then every IPv6 address."""
    name = host.encode("utf-8", "surrogateescape")
    if b"\0" in name or not name:
        raise LookupError(host)
    try:
        results = socket.getaddrinfo(
            name, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG
        )
    except (OSError, UnicodeError, ValueError):
        raise LookupError(host) from None
    found: list[tuple[socket.AddressFamily, bytes]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for result_family, _, _, _, sockaddr in results:
            if result_family == family:
                found.append((family, socket.inet_pton(family, str(sockaddr[0]))))
    if not found:
        raise LookupError(host)
    return found


def inet_addr(text: str) -> bytes | None:
    """ngx_inet_addr: four decimal octets separated by dots (nginx also takes `1..2.3` as 1.0.2.3)."""
    octets: list[int] = []
    octet = 0
    for char in text:
        if "0" <= char <= "9":
            octet = octet * 10 + ord(char) - 48
            if octet > 255:
                return None
        elif char == ".":
            octets.append(octet)
            octet = 0
        else:
            return None
    if len(octets) != 3:
        return None
    return bytes([*octets, octet])


def inet6_addr(text: str) -> bytes | None:
    """ngx_inet6_addr: an IPv6 literal without brackets or zone, possibly ending in dotted IPv4."""
    if not text or not text.isascii() or "%" in text or "\0" in text:
        return None
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None


def inet6_ntop(packed: bytes) -> str:
    """ngx_inet6_ntop: nginx's own IPv6 text form (differs from Python's for IPv4-mapped addresses)."""
    words = [packed[index] * 256 + packed[index + 1] for index in range(0, 16, 2)]
    zero, longest, run, run_start = -1, 1, 0, -1
    for index, word in enumerate(words):
        if word:
            if longest < run:
                zero, longest = run_start, run
            run = 0
            continue
        if run == 0:
            run_start = index
        run += 1
    if longest < run:
        zero, longest = run_start, run
    parts: list[str] = []
    count = 8
    if zero == 0:
        mapped = longest == 5 and words[5] == 0xFFFF
        compatible = longest == 6 or (longest == 7 and packed[14] != 0 and packed[15] != 1)
        if mapped or compatible:
            count = 6
        parts.append(":")
    index = 0
    while index < count:
        if index == zero:
            parts.append(":")
            index += longest
            continue
        parts.append(f"{words[index]:x}")
        if index < 7:
            parts.append(":")
        index += 1
    if count == 6:
        parts.append(".".join(str(byte) for byte in packed[12:]))
    return "".join(parts)


def address_text(family: socket.AddressFamily, packed: bytes) -> str:
    """The address alone, as nginx prints it (no brackets, no port)."""
    if family == socket.AF_INET6:
        return inet6_ntop(packed)
    return socket.inet_ntop(socket.AF_INET, packed)


@dataclass(frozen=True)
class SocketAddress:
    """One address a URL stands for; `name` is how nginx prints it (`1.2.3.4:143`, `[::1]:143`, `unix:/p`)."""

    family: socket.AddressFamily
    packed: bytes  # 4 or 16 bytes; the UTF-8 path for UNIX sockets
    port: int
    name: str

    @property
    def host(self) -> str:
        if self.family == socket.AF_UNIX:
            return self.packed.decode("utf-8", "surrogateescape")
        return address_text(self.family, self.packed)

    @property
    def wildcard(self) -> bool:
        return self.family != socket.AF_UNIX and not any(self.packed)


def _socket_address(family: socket.AddressFamily, packed: bytes, port: int) -> SocketAddress:
    text = address_text(family, packed)
    name = f"[{text}]:{port}" if family == socket.AF_INET6 else f"{text}:{port}"
    return SocketAddress(family, packed, port, name)


@dataclass(frozen=True)
class Url:
    """A parsed ngx_url_t: `host` is as written (IPv6 keeps its brackets), `addresses` are resolved."""

    family: socket.AddressFamily
    host: str
    port: int
    uri: str
    addresses: tuple[SocketAddress, ...]


class UrlError(Exception):
    """ngx_url_t.err: `invalid host`, `invalid port`, `host not found`, ..."""


def parse_url(
    url: str,
    lookup: HostLookup,
    *,
    listen: bool = False,
    uri_part: bool = False,
    default_port: int = 0,
) -> Url:
    """ngx_parse_url: `unix:/path[:uri]`, `[v6][:port][/uri]`, `host[:port][/uri]`, or (listen) `port`.

    `listen` accepts a bare port, `*`, and port ranges `a-b` (one address per port).
    """
    if url[:5].lower() == "unix:":
        return _parse_unix_url(url, uri_part=uri_part)
    if url.startswith("["):
        return _parse_inet6_url(url, listen=listen, uri_part=uri_part, default_port=default_port)
    return _parse_inet_url(url, lookup, listen=listen, uri_part=uri_part, default_port=default_port)


def _parse_unix_url(url: str, *, uri_part: bool) -> Url:
    path = url[5:]
    uri = ""
    if uri_part and ":" in path:
        path, uri = path.split(":", 1)
    if not path:
        raise UrlError("no path in the unix domain socket")
    if len(path.encode("utf-8", "surrogateescape")) + 1 > UNIX_PATH_MAX:
        raise UrlError("too long path in the unix domain socket")
    packed = path.encode("utf-8", "surrogateescape")
    address = SocketAddress(socket.AF_UNIX, packed, 0, "unix:" + path)
    return Url(socket.AF_UNIX, path, 0, uri, (address,))


def _port_range(text: str, *, listen: bool) -> tuple[int, int]:
    """`143` or (listen) `1143-1145`; raises `invalid port` / `invalid port range`."""
    last_port = 0
    if listen and "-" in text:
        text, last_text = text.split("-", 1)
        last = atoi(last_text)
        if last is None or not 1 <= last <= 65535:
            raise UrlError("invalid port")
        last_port = last
    port = atoi(text)
    if port is None or not 1 <= port <= 65535:
        raise UrlError("invalid port")
    if last_port and port > last_port:
        raise UrlError("invalid port range")
    return port, last_port or port


def _with_ports(
    family: socket.AddressFamily, packed_list: list[bytes], first: int, last: int
) -> tuple[SocketAddress, ...]:
    return tuple(
        _socket_address(family, packed, port) for packed in packed_list for port in range(first, last + 1)
    )


def _parse_inet_url(url: str, lookup: HostLookup, *, listen: bool, uri_part: bool, default_port: int) -> Url:
    last = len(url)
    colon = url.find(":")
    slash = url.find("/")
    question = url.find("?")
    if question >= 0 and (slash < 0 or question < slash):
        slash = question
    uri = ""
    if slash >= 0:
        if listen or not uri_part:
            raise UrlError("invalid host")
        uri = url[slash:]
        last = slash
        if slash < colon:
            colon = -1
    if colon >= 0:
        port, last_port = _port_range(url[colon + 1 : last], listen=listen)
        last = colon
    elif slash < 0 and listen and _is_port_only(url):
        port, last_port = _port_range(url, listen=True)
        packed = bytes(4)
        return Url(socket.AF_INET, "", port, "", _with_ports(socket.AF_INET, [packed], port, last_port))
    else:
        port = last_port = default_port
    host = url[:last]
    if not host:
        raise UrlError("no host")
    if listen and host == "*":
        packed_list = [bytes(4)]
        family = socket.AF_INET
    else:
        literal = inet_addr(host)
        if literal is not None:
            packed_list = [literal]
            family = socket.AF_INET
        else:
            try:
                resolved = lookup(host)
            except LookupError:
                raise UrlError("host not found") from None
            family = resolved[0][0]
            addresses = tuple(
                address
                for resolved_family, packed in resolved
                for address in _with_ports(resolved_family, [packed], port, last_port)
            )
            return Url(family, host, port, uri, addresses)
    return Url(family, host, port, uri, _with_ports(family, packed_list, port, last_port))


def _is_port_only(url: str) -> bool:
    """nginx's "test value as port only": digits, or digits-range whose end is a number."""
    first, dash, rest = url.partition("-")
    if dash and atoi(rest) is None:
        return False
    return atoi(first) is not None


def _parse_inet6_url(url: str, *, listen: bool, uri_part: bool, default_port: int) -> Url:
    close = url.find("]")
    if close < 0:
        raise UrlError("invalid host")
    last = len(url)
    port_start = close + 1
    slash = url.find("/", port_start)
    uri = ""
    if slash >= 0:
        if listen or not uri_part:
            raise UrlError("invalid host")
        uri = url[slash:]
        last = slash
    if port_start < last:
        if url[port_start] != ":":
            raise UrlError("invalid host")
        port, last_port = _port_range(url[port_start + 1 : last], listen=listen)
    else:
        port = last_port = default_port
    text = url[1:close]
    if not text:
        raise UrlError("no host")
    packed = inet6_addr(text)
    if packed is None:
        raise UrlError("invalid IPv6 address")
    return Url(
        socket.AF_INET6, url[: close + 1], port, uri, _with_ports(socket.AF_INET6, [packed], port, last_port)
    )


@dataclass(frozen=True)
class Cidr:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    host_bits_set: bool  # nginx warns `low address bits of X are meaningless`


def parse_cidr(text: str) -> Cidr | None:
    """ngx_ptocidr: `addr` or `addr/bits`; host bits are cleared (and reported)."""
    address_part, slash, bits_text = text.partition("/")
    packed = inet_addr(address_part)
    if packed is not None:
        network_class: type[ipaddress.IPv4Network] | type[ipaddress.IPv6Network] = ipaddress.IPv4Network
        width = 32
    else:
        packed = inet6_addr(address_part)
        if packed is None:
            return None
        network_class = ipaddress.IPv6Network
        width = 128
    bits = width
    if slash:
        parsed = atoi(bits_text)
        if parsed is None or parsed > width:
            return None
        bits = parsed
    network = network_class((packed, bits), strict=False)
    host_bits_set = network.network_address.packed != packed
    return Cidr(network, host_bits_set)
