"""PROXY protocol (v1 text and v2 binary): reading a client's header, realip, and writing one to a backend.

Sans-I/O. Reading follows nginx's first-read rule: the caller peeks at most `PROXY_HEADER_READ_SIZE` bytes of
the connection's first data, calls `read_proxy_header`, then consumes exactly `consumed` bytes; a header that
is not complete in that first read is broken. Writing builds the whole header, to be sent in one write.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from enum import IntEnum

from mailgate.config.model import ProxyProtocolOut, RealIpSettings
from mailgate.proxy.address import SocketAddress, format_ipv4, format_ipv6, parse_ip_text
from mailgate.proxy.crc32c import crc32c
from mailgate.tls.facts import TlsFacts

PROXY_HEADER_READ_SIZE = 4096  # nginx's NGX_PROXY_PROTOCOL_MAX_HEADER: the size of the first read
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V2_FIXED_SIZE = 16
_V2_INET_BLOCK = 12
_V2_INET6_BLOCK = 36
_V2_COMMAND_LOCAL = 0x20
_V2_COMMAND_PROXY = 0x21
_V2_FAMILY_UNSPEC = 0x00
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_ADDRESS_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


class Tlv(IntEnum):
    """PROXY v2 TLV types (HAProxy's proxy-protocol.txt, section 2.2)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    SSL_VERSION = 0x21
    SSL_CN = 0x22
    SSL_CIPHER = 0x23
    SSL_SIG_ALG = 0x24
    SSL_KEY_ALG = 0x25
    NETNS = 0x30


class SslClientFlag(IntEnum):
    """Bits of the `client` byte of the v2 SSL TLV."""

    SSL = 0x01
    CERT_CONN = 0x02
    CERT_SESS = 0x04


@dataclass(frozen=True)
class ProxyProtocolHeader:
    """A parsed PROXY header. Addresses are None for `UNKNOWN`, `LOCAL` and non-IP families."""

    version: int
    source_addr: str | None = None  # text as received (v1) or formatted (v2)
    source_port: int | None = None
    destination_addr: str | None = None
    destination_port: int | None = None
    tlvs: tuple[tuple[int, bytes], ...] = field(default=())

    @property
    def has_addresses(self) -> bool:
        return self.source_addr is not None


@dataclass(frozen=True)
class ProxyHeaderRead:
    """A header was read: the caller consumes `consumed` bytes; anything after them is protocol data."""

    header: ProxyProtocolHeader
    consumed: int


@dataclass(frozen=True)
class BrokenProxyHeader:
    """The first read holds no acceptable header: log `log_message` at error level and close silently."""

    log_message: str


def read_proxy_header(first_read: bytes) -> ProxyHeaderRead | BrokenProxyHeader:
    """Parse the header at the start of a connection's first read (`ngx_proxy_protocol_read`).

    Never raises: any input gives a header or a `BrokenProxyHeader` carrying nginx's log text.
    """
    data = first_read[:PROXY_HEADER_READ_SIZE]
    if len(data) >= _V2_FIXED_SIZE and data.startswith(V2_SIGNATURE):
        return _read_v2(data)
    return _read_v1(data)


def _broken_v1(data: bytes) -> BrokenProxyHeader:
    end = len(data)
    for index, char in enumerate(data):
        if char in (0x0D, 0x0A):
            end = index
            break
    text = data[:end].decode("utf-8", "backslashreplace")
    return BrokenProxyHeader(f'broken header: "{text}"')


def _read_v1_address(data: bytes, start: int) -> tuple[str, int] | None:
    """The address text up to the next space, and the position after that space."""
    space = data.find(b" ", start)
    if space < 0 or not _ADDRESS_CHARS.issuperset(data[start:space]):
        return None
    return data[start:space].decode("ascii"), space + 1


def _read_v1_port(data: bytes, start: int, separator: bytes) -> tuple[int, int] | None:
    """The port up to `separator` (0-65535, digits only, as `ngx_atoi`), and the position after it."""
    end = data.find(separator, start)
    if end < 0:
        return None
    digits = data[start:end]
    if not digits or not digits.isdigit() or int(digits) > 65535:
        return None
    return int(digits), end + 1


def _read_v1(data: bytes) -> ProxyHeaderRead | BrokenProxyHeader:
    if len(data) < 8 or not data.startswith(b"PROXY "):
        return _broken_v1(data)
    if data.startswith(b"UNKNOWN", 6):
        end = data.find(b"\r\n", 13)
        if end < 0:
            return _broken_v1(data)
        return ProxyHeaderRead(ProxyProtocolHeader(version=1), end + 2)
    if len(data) < 11 or not data.startswith(b"TCP", 6) or data[9] not in b"46" or data[10] != 0x20:
        return _broken_v1(data)

    source = _read_v1_address(data, 11)
    if source is None:
        return _broken_v1(data)
    destination = _read_v1_address(data, source[1])
    if destination is None:
        return _broken_v1(data)
    source_port = _read_v1_port(data, destination[1], b" ")
    if source_port is None:
        return _broken_v1(data)
    destination_port = _read_v1_port(data, source_port[1], b"\r")
    if destination_port is None:
        return _broken_v1(data)
    end = destination_port[1]
    if end >= len(data) or data[end] != 0x0A:
        return _broken_v1(data)
    header = ProxyProtocolHeader(
        version=1,
        source_addr=source[0],
        source_port=source_port[0],
        destination_addr=destination[0],
        destination_port=destination_port[0],
    )
    return ProxyHeaderRead(header, end + 1)


def _read_v2(data: bytes) -> ProxyHeaderRead | BrokenProxyHeader:
    version = data[12] >> 4
    if version != 2:
        return BrokenProxyHeader(f"unknown PROXY protocol version: {version}")
    length = int.from_bytes(data[14:16], "big")
    end = _V2_FIXED_SIZE + length
    if end > len(data):
        return BrokenProxyHeader("header is too large")
    command = data[12] & 0x0F
    transport = data[13] & 0x0F
    family = data[13] >> 4
    # Only PROXY over STREAM with an IP family carries addresses; the rest is accepted and ignored.
    if command != 1 or transport != 1 or family not in (1, 2):
        return ProxyHeaderRead(ProxyProtocolHeader(version=2), end)

    address_size = 4 if family == 1 else 16
    block_size = _V2_INET_BLOCK if family == 1 else _V2_INET6_BLOCK
    if length < block_size:
        return BrokenProxyHeader("header is too short for its address family")
    block = data[_V2_FIXED_SIZE : _V2_FIXED_SIZE + block_size]
    ports = block[2 * address_size :]
    format_address = format_ipv4 if family == 1 else format_ipv6
    header = ProxyProtocolHeader(
        version=2,
        source_addr=format_address(block[:address_size]),
        source_port=int.from_bytes(ports[:2], "big"),
        destination_addr=format_address(block[address_size : 2 * address_size]),
        destination_port=int.from_bytes(ports[2:4], "big"),
        tlvs=parse_tlvs(data[_V2_FIXED_SIZE + block_size : end]),
    )
    return ProxyHeaderRead(header, end)


def parse_tlvs(block: bytes) -> tuple[tuple[int, bytes], ...]:
    """The well-formed TLVs at the start of `block`; parsing stops at the first truncated one."""
    tlvs: list[tuple[int, bytes]] = []
    index = 0
    while index + 3 <= len(block):
        length = int.from_bytes(block[index + 1 : index + 3], "big")
        value_end = index + 3 + length
        if value_end > len(block):
            break
        tlvs.append((block[index], block[index + 3 : value_end]))
        index = value_end
    return tuple(tlvs)


def _peer_is_trusted(peer: SocketAddress, settings: RealIpSettings) -> bool:
    """`ngx_cidr_match`: IPv4-mapped IPv6 peers are matched against IPv4 networks."""
    if not peer.is_ip:
        return settings.trust_unix
    packed = peer.packed
    if len(packed) == 16 and packed.startswith(_IPV4_MAPPED_PREFIX):
        packed = packed[12:]
    ip = ipaddress.ip_address(packed)
    return any(ip.version == network.version and ip in network for network in settings.trusted)


def apply_realip(
    header: ProxyProtocolHeader | None, peer: SocketAddress, settings: RealIpSettings
) -> SocketAddress:
    """The client address for everything after the PROXY header (`ngx_mail_realip_handler`).

    The PROXY source replaces `peer` only when `set_real_ip_from` is configured, the header carried
    addresses, the actual peer is trusted, and the source text parses as nginx parses addresses.
    """
    if header is None or header.source_addr is None or not settings.enabled:
        return peer
    if not _peer_is_trusted(peer, settings):
        return peer
    source = parse_ip_text(header.source_addr.encode("ascii", "replace"), header.source_port or 0)
    return peer if source is None else source


def build_proxy_header_v1(client: SocketAddress, local: SocketAddress) -> bytes:
    """`PROXY TCP4|TCP6 <client> <local> <client port> <local port>\\r\\n`, or `PROXY UNKNOWN\\r\\n`.

    The protocol word follows the client's family only, as nginx does.
    """
    if client.family is socket.AF_INET:
        protocol = "TCP4"
    elif client.family is socket.AF_INET6:
        protocol = "TCP6"
    else:
        return b"PROXY UNKNOWN\r\n"
    return f"PROXY {protocol} {client.text} {local.text} {client.port} {local.port}\r\n".encode()


def _ipv4_block_part(address: SocketAddress) -> tuple[bytes, int]:
    if address.family is socket.AF_INET:
        return address.packed, address.port
    return b"\x7f\x00\x00\x01", 0  # not IPv4: nginx substitutes 127.0.0.1 port 0


def _ipv6_block_part(address: SocketAddress) -> tuple[bytes, int]:
    if address.family is socket.AF_INET6:
        return address.packed, address.port
    if address.family is socket.AF_INET:
        return _IPV4_MAPPED_PREFIX + address.packed, address.port
    return bytes(15) + b"\x01", 0  # not IP: nginx substitutes ::1 port 0


def _v2_addresses(client: SocketAddress, local: SocketAddress) -> tuple[int, int, bytes]:
    """(version/command byte, family/transport byte, address block) by nginx's family promotion rules."""
    families = {client.family, local.family}
    if socket.AF_INET6 in families:
        mapped = [
            address.family is socket.AF_INET6 and address.packed.startswith(_IPV4_MAPPED_PREFIX)
            for address in (client, local)
        ]
        if all(mapped):
            parts = [(address.packed[12:], address.port) for address in (client, local)]
            family = _V2_TCP4
        else:
            parts = [_ipv6_block_part(client), _ipv6_block_part(local)]
            family = _V2_TCP6
    elif socket.AF_INET in families:
        parts = [_ipv4_block_part(client), _ipv4_block_part(local)]
        family = _V2_TCP4
    else:
        return _V2_COMMAND_LOCAL, _V2_FAMILY_UNSPEC, b""
    block = parts[0][0] + parts[1][0] + parts[0][1].to_bytes(2, "big") + parts[1][1].to_bytes(2, "big")
    return _V2_COMMAND_PROXY, family, block


def _tlv(tlv_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"PROXY v2 TLV 0x{tlv_type:02x} value is too long ({len(value)} bytes)")
    return bytes([tlv_type]) + len(value).to_bytes(2, "big") + value


def _ssl_tlv(tls: TlsFacts) -> bytes:
    certificate = tls.certificate
    client_flags: int = SslClientFlag.SSL
    if certificate is not None:
        client_flags |= SslClientFlag.CERT_SESS
        if certificate.presented_on_this_connection:
            client_flags |= SslClientFlag.CERT_CONN
    verify = 1 if certificate is None else tls.verify_code
    sub_tlvs = [
        (Tlv.SSL_VERSION, tls.protocol),
        (Tlv.SSL_CN, certificate.common_name if certificate is not None else None),
        (Tlv.SSL_CIPHER, tls.cipher),
        (Tlv.SSL_SIG_ALG, tls.server_signature_algorithm),
        (Tlv.SSL_KEY_ALG, tls.server_key_algorithm),
    ]
    value = bytes([client_flags]) + (verify & 0xFFFFFFFF).to_bytes(4, "big")
    value += b"".join(_tlv(kind, text.encode()) for kind, text in sub_tlvs if text)
    return _tlv(Tlv.SSL, value)


def build_proxy_header_v2(client: SocketAddress, local: SocketAddress, tls: TlsFacts | None) -> bytes:
    """The binary v2 header nginx sends with `proxy_protocol v2`.

    Command PROXY over STREAM, or LOCAL/UNSPEC when neither side is IP. With TLS on the client connection,
    TLVs AUTHORITY (SNI), ALPN and SSL (client flags, verify, then VERSION, CN, CIPHER, SIG_ALG, KEY_ALG);
    always a CRC32C TLV last, computed over the whole header with its own value zeroed.
    """
    command, family, block = _v2_addresses(client, local)
    tlvs = b""
    if tls is not None:
        if tls.server_name:
            tlvs += _tlv(Tlv.AUTHORITY, tls.server_name.encode())
        if tls.alpn:
            tlvs += _tlv(Tlv.ALPN, tls.alpn.encode())
        tlvs += _ssl_tlv(tls)
    body = block + tlvs + _tlv(Tlv.CRC32C, bytes(4))
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header is too long ({len(body)} bytes after the fixed part)")
    header = V2_SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body
    return header[:-4] + crc32c(header).to_bytes(4, "big")


def build_proxy_header(
    version: ProxyProtocolOut, client: SocketAddress, local: SocketAddress, tls: TlsFacts | None
) -> bytes | None:
    """The header for `proxy_protocol on|v2` (None for `off`).

    `client` is the (possibly realip-rewritten) client address; `local` is the address of mailgate's
    side of the client connection; `tls` describes the client connection if it uses TLS.
    """
    if version is ProxyProtocolOut.V1:
        return build_proxy_header_v1(client, local)
    if version is ProxyProtocolOut.V2:
        return build_proxy_header_v2(client, local, tls)
    return None
