"""`ssl_session_cache shared:NAME:SIZE`: a session store and ticket-key store shared by all worker processes.

The store is an LMDB environment (py-lmdb) in a private directory, one per zone name. LMDB was chosen over a
hand-made mmap table because it already gives what nginx's shared zone needs across processes: a B-tree keyed
by session id, atomic multi-step updates (evict + insert, key rotation) under a cross-process writer lock that
is a robust mutex (a worker killed while holding it does not wedge the others), and lock-free readers.
LMDB environments must not be used across fork(): every process opens its own handle on first use (and
`after_fork()` drops inherited handles), so the master may build contexts before forking workers.

Semantics follow nginx (§4.8): entries keep insertion order; each insertion first drops up to two expired
entries from the old end, and when the zone is full drops the oldest entry (expired or not) and retries once.
A zone's SIZE is charged like nginx's slab allocator, about 256 bytes for an ordinary session (4000 per MB).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

log = logging.getLogger("mailgate.tls")

MAX_SESSION_SIZE = 8192  # nginx's NGX_SSL_MAX_SESSION_SIZE: larger sessions are not cached
MAX_SESSION_ID_SIZE = 32
_ENTRY_OVERHEAD = 96  # index node + id, as nginx's 64-bit slab layout charges it
_MIN_ENTRY_COST = 256

_ENTRY_HEADER = struct.Struct(">qQ")  # expire (unix seconds), insertion sequence number
_KEY_RECORD = struct.Struct(">q80s")  # expire, then name(16) + hmac(32) + aes(32) as in an 80-byte key file
_SEQ_KEY = b"seq"
_USED_KEY = b"used"
_TICKET_KEYS_KEY = b"ticket-keys"


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


def _random_key(expire: int) -> TicketKey:
    return TicketKey.from_file_bytes(secrets.token_bytes(80), expire=expire)


def entry_cost(session_der_size: int) -> int:
    """Bytes of the zone one cached session uses up."""
    return max(_MIN_ENTRY_COST, _ENTRY_OVERHEAD + session_der_size)


class SharedSessionCache:
    """One named shared zone: sessions by id and the automatic ticket keys, common to all processes."""

    def __init__(self, name: str, size: int, path: Path) -> None:
        self.name = name
        self.size = size
        self.path = path
        self._env: Any = None
        self._pid = -1
        self._dbs: tuple[Any, Any, Any] | None = None
        self._last_failure_warning = 0

    # -- handles ------------------------------------------------------------------------------------------

    def _open(self) -> tuple[Any, tuple[Any, Any, Any]]:
        if self._env is None or self._pid != os.getpid():
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            env = lmdb.open(
                str(self.path),
                map_size=max(self.size * 4, 1 << 20) + (1 << 20),
                max_dbs=3,
                sync=False,
                metasync=False,
                readahead=False,
                meminit=False,
            )
            sessions = env.open_db(b"sessions")
            queue = env.open_db(b"queue")
            meta = env.open_db(b"meta")
            self._env, self._dbs, self._pid = env, (sessions, queue, meta), os.getpid()
        assert self._dbs is not None
        return self._env, self._dbs

    def forget_handles(self) -> None:
        """Drop (without closing) a handle inherited across fork(); the next use opens a fresh one."""
        if self._pid != os.getpid():
            self._env, self._dbs, self._pid = None, None, -1

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            self._env.close()
        self._env, self._dbs, self._pid = None, None, -1

    # -- sessions -----------------------------------------------------------------------------------------

    def store(self, session_id: bytes, der: bytes, timeout: int) -> bool:
        """Cache a session until now + timeout; False (and a rate-limited warning) when it does not fit."""
        if len(der) > MAX_SESSION_SIZE or len(session_id) > MAX_SESSION_ID_SIZE:
            return False
        env, (sessions, queue, meta) = self._open()
        now = int(time.time())
        cost = entry_cost(len(der))
        try:
            with env.begin(write=True) as txn:
                self._delete(txn, session_id)
                self._expire(txn, now, 1)
                if self._used(txn) + cost > self.size:
                    self._expire(txn, now, 0)
                    if self._used(txn) + cost > self.size:
                        raise lmdb.MapFullError("zone full")
                seq = _read_int(txn.get(_SEQ_KEY, db=meta)) + 1
                txn.put(_SEQ_KEY, seq.to_bytes(8, "big"), db=meta)
                txn.put(session_id, _ENTRY_HEADER.pack(now + timeout, seq) + der, db=sessions)
                txn.put(seq.to_bytes(8, "big"), session_id, db=queue)
                txn.put(_USED_KEY, (self._used(txn) + cost).to_bytes(8, "big"), db=meta)
        except lmdb.MapFullError:
            if self._last_failure_warning != now:
                self._last_failure_warning = now
                log.warning('could not allocate new session in SSL session shared cache "%s"', self.name)
            return False
        return True

    def fetch(self, session_id: bytes) -> bytes | None:
        """The DER of an unexpired cached session; an expired one is removed."""
        env, (sessions, _queue, _meta) = self._open()
        with env.begin() as txn:
            value = txn.get(session_id, db=sessions)
        if value is None:
            return None
        expire, _seq = _ENTRY_HEADER.unpack_from(value)
        if expire > int(time.time()):
            return bytes(value[_ENTRY_HEADER.size :])
        self.remove(session_id)
        return None

    def remove(self, session_id: bytes) -> None:
        env, _dbs = self._open()
        with env.begin(write=True) as txn:
            self._delete(txn, session_id)

    def __len__(self) -> int:
        env, (sessions, _queue, _meta) = self._open()
        with env.begin() as txn:
            return int(txn.stat(sessions)["entries"])

    def _used(self, txn: Any) -> int:
        assert self._dbs is not None
        return _read_int(txn.get(_USED_KEY, db=self._dbs[2]))

    def _delete(self, txn: Any, session_id: bytes) -> None:
        assert self._dbs is not None
        sessions, queue, meta = self._dbs
        value = txn.get(session_id, db=sessions)
        if value is None:
            return
        _expire, seq = _ENTRY_HEADER.unpack_from(value)
        cost = entry_cost(len(value) - _ENTRY_HEADER.size)
        txn.delete(session_id, db=sessions)
        txn.delete(seq.to_bytes(8, "big"), db=queue)
        txn.put(_USED_KEY, max(0, self._used(txn) - cost).to_bytes(8, "big"), db=meta)

    def _expire(self, txn: Any, now: int, n: int) -> None:
        """nginx's ngx_ssl_expire_sessions: n=1 drops up to two expired entries, n=0 the oldest first."""
        assert self._dbs is not None
        sessions, queue, _meta = self._dbs
        while n < 3:
            cursor = txn.cursor(db=queue)
            if not cursor.first():
                return
            session_id = bytes(cursor.value())
            value = txn.get(session_id, db=sessions)
            expire = _ENTRY_HEADER.unpack_from(value)[0] if value is not None else 0
            checked = n != 0
            n += 1
            if checked and expire > now:
                return
            if value is None:
                txn.delete(cursor.key(), db=queue)
            else:
                self._delete(txn, session_id)

    # -- ticket keys --------------------------------------------------------------------------------------

    def rotate_ticket_keys(self, timeout: int) -> tuple[TicketKey, TicketKey]:
        """nginx's ngx_ssl_rotate_ticket_keys on the zone: (current, previous) after any due rotation."""
        env, (_sessions, _queue, meta) = self._open()
        now = int(time.time())
        expire = now + timeout
        with env.begin(write=True) as txn:
            record = txn.get(_TICKET_KEYS_KEY, db=meta)
            keys = _unpack_keys(bytes(record)) if record is not None else []
            if not keys:
                current = _random_key(expire)
                keys = [current, TicketKey(b"\0" * 16, b"\0" * 32, b"\0" * 32, 0), current]
            if keys[1].expire < now:
                keys = [keys[2], keys[0], _random_key(0)]
            if expire > keys[0].expire:
                keys[0] = TicketKey(keys[0].name, keys[0].aes_key, keys[0].hmac_key, expire)
            txn.put(_TICKET_KEYS_KEY, _pack_keys(keys), db=meta)
        return keys[0], keys[1]


def _read_int(value: Any) -> int:
    return int.from_bytes(bytes(value), "big") if value is not None else 0


def _pack_keys(keys: list[TicketKey]) -> bytes:
    return b"".join(_KEY_RECORD.pack(key.expire, key.to_file_bytes()) for key in keys)


def _unpack_keys(record: bytes) -> list[TicketKey]:
    keys: list[TicketKey] = []
    for offset in range(0, len(record), _KEY_RECORD.size):
        expire, material = _KEY_RECORD.unpack_from(record, offset)
        keys.append(TicketKey.from_file_bytes(material, expire=expire))
    return keys


# ---------------------------------------------------------------------------------------------------------
# Zones by name, for all servers of this process (and, through the directory, its forked workers)

_zones: dict[str, SharedSessionCache] = {}
_directory: Path | None = None
_directory_owner = -1


def set_shared_cache_directory(path: Path) -> None:
    """Where zone stores live (the process model may choose it, e.g. to give workers access); before use."""
    global _directory, _directory_owner
    _directory, _directory_owner = path, -1


def shared_cache_directory() -> Path:
    """The directory of the zone stores, created (mode 0700, on tmpfs when possible) on first need."""
    global _directory, _directory_owner
    if _directory is None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        _directory = Path(tempfile.mkdtemp(prefix="mailgate-ssl-sessions-", dir=base))
        _directory_owner = os.getpid()
        atexit.register(_remove_directory)
    return _directory


def _remove_directory() -> None:
    # Only the process that created it removes it: forked workers run atexit handlers too.
    if _directory is not None and _directory_owner == os.getpid():
        shutil.rmtree(_directory, ignore_errors=True)


def shared_cache(name: str, size: int) -> SharedSessionCache:
    """The zone called `name`: every server naming it shares one store (a new size replaces the zone)."""
    zone = _zones.get(name)
    if zone is None or zone.size != size:
        if zone is not None:
            zone.close()
        generation = secrets.token_hex(4)
        zone = SharedSessionCache(
            name, size, shared_cache_directory() / f"{name.encode().hex()}-{generation}"
        )
        _zones[name] = zone
    return zone


def after_fork() -> None:
    """Call in a child right after fork(): drops the LMDB handles inherited from the parent."""
    for zone in _zones.values():
        zone.forget_handles()
