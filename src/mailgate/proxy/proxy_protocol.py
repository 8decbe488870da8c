"""PROXY protocol (v1 text and v2 binary): what a client-side header told us."""

from __future__ import annotations

from dataclasses import dataclass, field


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
