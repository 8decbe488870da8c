"""`ssl_session_cache shared:NAME:SIZE`: a session store and ticket-key store shared by all worker processes.

The zone itself is C (`mailgate._io.SessionZone`, src/mailgate/_session_zone.c): one anonymous shared
mapping made when the configuration is loaded, before the master forks, as nginx makes its shared zones;
the handshake callbacks store, find and remove sessions in it without entering Python. It keeps nginx's
rules (§4.8): entries in insertion order, each insertion first dropping up to two expired entries from the
old end and, when the zone is full, the oldest entry (expired or not) before one more try; an ordinary
session uses about 256 bytes of SIZE (4000 a megabyte).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

from mailgate import _io

log = logging.getLogger("mailgate.tls")


@dataclass(frozen=True)
class TicketKey:
    """One session ticket key: 16-byte name, AES key (16 or 32 bytes), HMAC secret (16 or 32 bytes)."""

    name: bytes
    aes_key: bytes
    hmac_key: bytes
    expire: int = 0  # for shared keys: until when it must stay usable; file keys use 1 (renew if not first)

    @property
    def size(self) -> int:
        """48 (AES-128-CBC) or 80 (AES-256-CBC), the size of the key file this key has the layout of."""
        return 48 if len(self.aes_key) == 16 else 80

    @classmethod
    def from_file_bytes(cls, data: bytes, expire: int = 1) -> TicketKey:
        """nginx's layouts: 48 bytes = name, AES-128 key, HMAC; 80 bytes = name, HMAC, AES-256 key."""
        if len(data) == 48:
            return cls(name=data[:16], aes_key=data[16:32], hmac_key=data[32:48], expire=expire)
        if len(data) == 80:
            return cls(name=data[:16], hmac_key=data[16:48], aes_key=data[48:80], expire=expire)
        raise ValueError("a ticket key is 48 or 80 bytes")

    def to_file_bytes(self) -> bytes:
        if self.size == 48:
            return self.name + self.aes_key + self.hmac_key
        return self.name + self.hmac_key + self.aes_key

    def __repr__(self) -> str:
        return f"TicketKey(name={self.name.hex()}, size={self.size}, expire={self.expire})"


def _warn_full(name: str) -> None:
    log.warning('could not allocate new session in SSL session shared cache "%s"', name)


class SharedSessionCache:
    """One named shared zone: sessions by id and the automatic ticket keys, common to all processes forked
    after it was made."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.zone = _io.SessionZone(size, on_full=functools.partial(_warn_full, name))

    def store(self, session_id: bytes, der: bytes, timeout: int) -> bool:
        """Cache a session until now + timeout; False when it is too large or does not fit (nginx's
        warning is logged once a second)."""
        return self.zone.store(session_id, der, timeout)

    def fetch(self, session_id: bytes) -> bytes | None:
        """The DER of an unexpired cached session; an expired one is removed."""
        return self.zone.fetch(session_id)

    def remove(self, session_id: bytes) -> None:
        self.zone.remove(session_id)

    def __len__(self) -> int:
        return len(self.zone)

    def rotate_ticket_keys(self, timeout: int) -> tuple[TicketKey, TicketKey]:
        """nginx's ngx_ssl_rotate_ticket_keys on the zone: (current, previous) after any due rotation."""
        now = int(time.time())
        (current_expire, current), (previous_expire, previous) = self.zone.rotate_ticket_keys(timeout, now)
        return (
            TicketKey.from_file_bytes(current, expire=current_expire),
            TicketKey.from_file_bytes(previous, expire=previous_expire),
        )


# Zones by name, for all servers of this process and the workers it forks afterwards
_zones: dict[str, SharedSessionCache] = {}


def shared_cache(name: str, size: int) -> SharedSessionCache:
    """The zone called `name`: every server naming it shares one store (a new size replaces the zone)."""
    zone = _zones.get(name)
    if zone is None or zone.size != size:
        zone = SharedSessionCache(name, size)
        _zones[name] = zone
    return zone
