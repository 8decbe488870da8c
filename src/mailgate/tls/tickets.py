"""Session ticket keys: `ssl_session_ticket_key` files, or keys kept and rotated in a shared cache zone."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from mailgate.config.errors import ConfigError
from mailgate.tls.sessions import SharedSessionCache, TicketKey


def read_ticket_key_file(path: Path) -> TicketKey:
    """One key file: exactly 48 or 80 bytes, else nginx's `"FILE" must be 48 or 80 bytes`."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f'open() "{path}" failed ({error.errno}: {error.strerror})') from None
    if len(data) not in (48, 80):
        raise ConfigError(f'"{path}" must be 48 or 80 bytes')
    return TicketKey.from_file_bytes(data)


class TicketKeyRing:
    """The keys one context encrypts tickets with (the first) and decrypts them with (any)."""

    def __init__(self, keys: Sequence[TicketKey] = (), shared: SharedSessionCache | None = None) -> None:
        self._keys: tuple[TicketKey, ...] = tuple(keys)
        self._shared = shared

    @property
    def shared(self) -> bool:
        return self._shared is not None

    def current(self, timeout: int) -> tuple[TicketKey, ...]:
        """Keys for one ticket operation, rotating shared keys first when due (nginx 1.23.2+)."""
        if self._shared is None:
            return self._keys
        now = int(time.time())
        # Skip the zone while the current key lives long enough and the previous one is still needed.
        if len(self._keys) == 2 and self._keys[0].expire >= now + timeout and self._keys[1].expire >= now:
            return self._keys
        self._keys = self._shared.rotate_ticket_keys(timeout)
        return self._keys

    def snapshot(self, timeout: int) -> tuple[list[tuple[bytes, bytes, bytes, int]], float]:
        """The keys as the handshake callback in `mailgate._io` holds them, (name, AES key, HMAC key,
        expire) each, and for how many seconds they need no `current()` call (file keys: for good)."""
        keys = self.current(timeout)
        if self._shared is None:
            valid_for = 1e9
        elif len(keys) == 2:
            # current() skips the zone while int(time.time()) is at most this, to the end of that second
            valid_for = max(0.0, min(keys[0].expire - timeout, keys[1].expire) + 1 - time.time())
        else:
            valid_for = 0.0
        return [(key.name, key.aes_key, key.hmac_key, key.expire) for key in keys], valid_for
