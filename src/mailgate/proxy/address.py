"""Socket addresses as nginx parses and prints them (`ngx_inet_addr`, `ngx_inet6_addr`, `ngx_sock_ntop`).

nginx's text forms matter: they appear in `Client-IP`, `XCLIENT ADDR=`, the outgoing PROXY header and logs.
IPv6 is printed compressed with lowercase hex, and with a dotted IPv4 tail for `::ffff:a.b.c.d`,
`::a.b.c.d` and (an nginx quirk) `::0.0.x.y` unless the address is `::1`-like.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

_INADDR_NONE = b"\xff\xff\xff\xff"
_UINT64_MASK = (1 << 64) - 1


def parse_ipv4_text(text: bytes) -> bytes | None:
    """Four packed bytes for a dotted quad, as `ngx_inet_addr` accepts it, else None.

    Like nginx, empty octets and leading zeros are accepted (`1..2.3` is 1.0.2.3) and 255.255.255.255
    is refused (it is `INADDR_NONE`).
    """
    addr = 0
    octet = 0
    dots = 0
    for char in text:
        if 0x30 <= char <= 0x39:
            octet = (octet * 10 + char - 0x30) & _UINT64_MASK
            continue
        if char == 0x2E and octet < 256:
            addr = (addr << 8) + octet
            octet = 0
            dots += 1
            continue
        return None
    if dots != 3 or octet >= 256:
        return None
    packed = ((addr << 8) + octet).to_bytes(4, "big")
    return None if packed == _INADDR_NONE else packed


def parse_ipv6_text(text: bytes) -> bytes | None:
    """Sixteen packed bytes for an IPv6 text, as `ngx_inet6_addr` accepts it, else None.

    Faithful to nginx's leniency: one leading `:` is skipped, so `:1:2:3:4:5:6:7:8` parses.
    """
    if not text:
        return None
    out = bytearray()
    zero_at: int | None = None
    tail_at: int | None = None  # where a dotted IPv4 tail would start
    nibbles = 0
    word = 0
    words_left = 8
    index = 1 if text[0] == 0x3A else 0
    while index < len(text):
        char = text[index]
        index += 1
        if char == 0x3A:
            if nibbles:
                tail_at = index
                out += (word & 0xFFFF).to_bytes(2, "big")
                words_left -= 1
                if words_left:
                    nibbles = 0
                    word = 0
                    continue
            elif zero_at is None:
                tail_at = index
                zero_at = len(out)
                continue
            return None
        if char == 0x2E and nibbles:
            if words_left < 2 or tail_at is None:
                return None
            ipv4 = parse_ipv4_text(text[tail_at:])
            if ipv4 is None:
                return None
            out += ipv4[:2]
            word = int.from_bytes(ipv4, "big")
            words_left -= 1
            break
        nibbles += 1
        if nibbles > 4:
            return None
        if 0x30 <= char <= 0x39:
            word = word * 16 + char - 0x30
            continue
        char |= 0x20
        if 0x61 <= char <= 0x66:
            word = word * 16 + char - 0x61 + 10
            continue
        return None
    if nibbles == 0 and zero_at is None:
        return None
    out += (word & 0xFFFF).to_bytes(2, "big")
    words_left -= 1
    if words_left:
        if zero_at is None:
            return None
        return bytes(out[:zero_at]) + bytes(2 * words_left) + bytes(out[zero_at:])
    return bytes(out) if zero_at is None else None


def format_ipv4(packed: bytes) -> str:
    return ".".join(str(octet) for octet in packed)


def format_ipv6(packed: bytes) -> str:
    """`ngx_inet6_ntop`: the longest run (first if tied) of two or more zero words becomes `::`."""
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best_start, best_length = -1, 1
    run_start, run_length = -1, 0
    for index, word in enumerate(words):
        if word:
            if run_length > best_length:
                best_start, best_length = run_start, run_length
            run_length = 0
            continue
        if run_length == 0:
            run_start = index
        run_length += 1
    if run_length > best_length:
        best_start, best_length = run_start, run_length

    hex_words = 8
    text = ""
    if best_start == 0:
        if (
            (best_length == 5 and words[5] == 0xFFFF)
            or best_length == 6
            or (best_length == 7 and packed[14] != 0 and packed[15] != 1)
        ):
            hex_words = 6
        text = ":"
    index = 0
    while index < hex_words:
        if index == best_start:
            text += ":"
            index += best_length
            continue
        text += f"{words[index]:x}"
        if index < 7:
            text += ":"
        index += 1
    if hex_words == 6:
        text += format_ipv4(packed[12:])
    return text


def _packed_ip(family: socket.AddressFamily, host: str) -> bytes:
    """Strict parsing of a socket's own address text (a scope suffix such as `%eth0` is dropped)."""
    try:
        return socket.inet_pton(family, host.split("%", 1)[0])
    except (OSError, ValueError):
        kind = "IPv4" if family is socket.AF_INET else "IPv6"
        raise ValueError(f"invalid {kind} address {host!r}") from None


@dataclass(frozen=True)
class SocketAddress:
    """One end of a connection: an IPv4/IPv6 address and port, or a UNIX-domain socket path.

    `host` is normalised at construction to nginx's text form (IPv6 compressed, no brackets, no scope),
    so equal addresses compare equal and print as nginx prints them.
    """

    family: socket.AddressFamily
    host: str  # IP text, or the socket path for AF_UNIX ("" for an unnamed socket)
    port: int = 0  # 0 for AF_UNIX

    def __post_init__(self) -> None:
        if self.family is socket.AF_INET:
            object.__setattr__(self, "host", format_ipv4(_packed_ip(self.family, self.host)))
        elif self.family is socket.AF_INET6:
            object.__setattr__(self, "host", format_ipv6(_packed_ip(self.family, self.host)))
        elif self.family is not socket.AF_UNIX:
            raise ValueError(f"unsupported address family {self.family!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port}")

    @classmethod
    def from_sockname(cls, family: socket.AddressFamily, sockname: object) -> SocketAddress:
        """From `socket.getpeername()` / `getsockname()` (or asyncio's `peername` / `sockname`)."""
        if family is socket.AF_INET and type(sockname) is tuple and len(sockname) == 2:
            host, port = sockname
            if type(host) is str and type(port) is int and 0 <= port <= 65535:
                return cls._from_kernel(family, host, port)
        if family is socket.AF_UNIX:
            path = os.fsdecode(sockname) if isinstance(sockname, str | bytes) else ""
            return cls(family, path)
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            host, port = sockname[0], sockname[1]
            if isinstance(host, str) and isinstance(port, int):
                return cls(family, host, port)
        raise ValueError(f"not a socket address: {sockname!r}")

    @classmethod
    def _from_kernel(cls, family: socket.AddressFamily, host: str, port: int) -> SocketAddress:
        """An IPv4 address as the kernel's inet_ntop wrote it: already in nginx's text form."""
        address = object.__new__(cls)
        object.__setattr__(address, "family", family)
        object.__setattr__(address, "host", host)
        object.__setattr__(address, "port", port)
        return address

    @classmethod
    def from_packed(cls, packed: bytes, port: int) -> SocketAddress:
        """From 4 or 16 network-order address bytes."""
        if len(packed) == 4:
            return cls(socket.AF_INET, format_ipv4(packed), port)
        return cls(socket.AF_INET6, format_ipv6(packed), port)

    @property
    def is_ip(self) -> bool:
        return self.family is not socket.AF_UNIX

    @property
    def packed(self) -> bytes:
        """Network-order address bytes (4 or 16); only for IP addresses."""
        if not self.is_ip:
            raise ValueError("a UNIX-domain socket has no IP address")
        return socket.inet_pton(self.family, self.host)

    @property
    def text(self) -> str:
        """nginx's address text without the port: `192.0.2.1`, `2001:db8::1`, `unix:/path`."""
        return self.host if self.is_ip else f"unix:{self.host}"

    def __str__(self) -> str:
        """With the port, as nginx logs a peer: `192.0.2.1:993`, `[2001:db8::1]:993`, `unix:/path`."""
        if self.family is socket.AF_INET:
            return f"{self.host}:{self.port}"
        if self.family is socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return self.text


def parse_ip_text(text: bytes, port: int) -> SocketAddress | None:
    """`ngx_parse_addr`: an IPv4 text, else an IPv6 text, each as nginx accepts it; None if neither."""
    packed = parse_ipv4_text(text) or parse_ipv6_text(text)
    return None if packed is None else SocketAddress.from_packed(packed, port)
