"""The shared session cache's zone (`mailgate._io.SessionZone`, src/mailgate/_session_zone.c) against nginx's
rules written as a plain Python model (§4.8 of the spec): insertion order, up to two expired entries dropped
before each insertion, the oldest dropped (expired or not) when there is no room, one more try; lookups of
expired sessions remove them. Random operations on a small zone make it evict, chain multi-block sessions,
reuse freed blocks and replace ids all the time, and every answer must be the model's."""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate import _io

BLOCK = 256
FIRST_BLOCK_DATA = 192  # a block less its entry head (id, expiry, links)
NEXT_BLOCK_DATA = 252  # a block less its link to the next


def blocks_for(der_length: int) -> int:
    if der_length <= FIRST_BLOCK_DATA:
        return 1
    return 1 + -(-(der_length - FIRST_BLOCK_DATA) // NEXT_BLOCK_DATA)


class ZoneModel:
    """nginx's ngx_ssl_new_session / ngx_ssl_get_cached_session / ngx_ssl_expire_sessions over blocks."""

    def __init__(self, size: int) -> None:
        self.capacity = size // BLOCK
        self.used = 0
        self.entries: dict[bytes, tuple[int, bytes]] = {}  # in insertion order

    def store(self, session_id: bytes, der: bytes, timeout: int, now: int) -> bool:
        if not 0 < len(der) <= 8192 or not 0 < len(session_id) <= 32:
            return False
        needed = blocks_for(len(der))
        self.remove(session_id)
        self._expire(now, 1)
        if self.capacity - self.used < needed:
            self._expire(now, 0)
            if self.capacity - self.used < needed:
                return False
        self.entries[session_id] = (now + timeout, der)
        self.used += needed
        return True

    def fetch(self, session_id: bytes, now: int) -> bytes | None:
        entry = self.entries.get(session_id)
        if entry is None:
            return None
        if entry[0] <= now:
            self.remove(session_id)
            return None
        return entry[1]

    def remove(self, session_id: bytes) -> None:
        entry = self.entries.pop(session_id, None)
        if entry is not None:
            self.used -= blocks_for(len(entry[1]))

    def _expire(self, now: int, n: int) -> None:
        while n < 3 and self.entries:
            oldest = next(iter(self.entries))
            checked = n != 0
            n += 1
            if checked and self.entries[oldest][0] > now:
                return
            self.remove(oldest)


IDS = [bytes([i]) * 32 for i in range(6)] + [b"short", b"x" * 33, b""]
DER_LENGTHS = st.one_of(
    st.integers(0, 200),
    st.integers(0, 800),
    st.sampled_from([191, 192, 193, 443, 444, 445, 696, 8191, 8192, 8193]),
    st.integers(0, 8300),
)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.sampled_from(IDS), DER_LENGTHS, st.integers(0, 3)),
        st.tuples(st.just("store"), st.sampled_from(IDS), DER_LENGTHS, st.integers(0, 3)),
        st.tuples(st.just("fetch"), st.sampled_from(IDS)),
        st.tuples(st.just("remove"), st.sampled_from(IDS)),
        st.tuples(st.just("tick"), st.integers(1, 2)),
    ),
    max_size=80,
)


def _der(serial: int, length: int) -> bytes:
    seed = hashlib.sha256(serial.to_bytes(8, "big")).digest()
    return (seed * (length // len(seed) + 1))[:length]


@settings(max_examples=500, deadline=None)
@given(size=st.sampled_from([0, 255, 256, 1024, 2048, 4096, 16 * 1024]), operations=OPERATIONS)
def test_the_zone_answers_as_nginxs_rules(size: int, operations: list[tuple[object, ...]]) -> None:
    zone = _io.SessionZone(size)
    model = ZoneModel(size)
    now = 1_000_000
    for serial, operation in enumerate(operations):
        match operation:
            case ("store", bytes() as session_id, int() as length, int() as timeout):
                der = _der(serial, length)
                assert zone.store(session_id, der, timeout, now) == model.store(session_id, der, timeout, now)
            case ("fetch", bytes() as session_id):
                assert zone.fetch(session_id, now) == model.fetch(session_id, now)
            case ("remove", bytes() as session_id):
                zone.remove(session_id)
                model.remove(session_id)
            case ("tick", int() as seconds):
                now += seconds
        assert len(zone) == len(model.entries)
    for session_id in IDS:
        assert zone.fetch(session_id, now) == model.fetch(session_id, now)


def test_entries_removed_from_the_middle_leave_the_oldest_to_go_first() -> None:
    zone = _io.SessionZone(4 * BLOCK)
    for name in b"ABCD":
        assert zone.store(bytes([name]) * 32, bytes([name]), 300, 1000)
    zone.remove(b"B" * 32)
    zone.remove(b"C" * 32)
    for name in b"EFG":  # G finds the zone full: A, the oldest, goes
        assert zone.store(bytes([name]) * 32, bytes([name]), 300, 1000)
    assert [zone.fetch(bytes([name]) * 32, 1000) for name in b"ADEFG"] == [None, b"D", b"E", b"F", b"G"]


def test_a_full_zone_warns_once_a_second() -> None:
    warnings: list[None] = []
    zone = _io.SessionZone(2 * BLOCK, on_full=lambda: warnings.append(None))
    assert zone.store(b"a" * 32, b"x" * 100, 300, 1000)
    assert zone.store(b"b" * 32, b"x" * 100, 300, 1000)
    assert not zone.store(b"c" * 32, b"x" * 500, 300, 1000)  # three blocks: the oldest alone is not enough
    assert not zone.store(b"d" * 32, b"x" * 500, 300, 1000)
    assert len(warnings) == 1
    assert not zone.store(b"e" * 32, b"x" * 5000, 300, 1001)
    assert len(warnings) == 2
    assert not zone.store(b"f" * 32, b"x" * 8193, 300, 1002)  # too large to cache is not a full zone
    assert len(warnings) == 2


def _store_in_child(zone: _io.SessionZone, session_id: bytes, der: bytes) -> None:
    os._exit(0 if zone.store(session_id, der, 300) and zone.fetch(b"parent" * 4) == b"from the parent" else 1)


def test_processes_forked_after_the_zone_is_made_share_it() -> None:
    zone = _io.SessionZone(64 * 1024)
    assert zone.store(b"parent" * 4, b"from the parent", 300)
    child = multiprocessing.get_context("fork").Process(
        target=_store_in_child, args=(zone, b"child" * 4, b"from the child" * 40)
    )
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert zone.fetch(b"child" * 4) == b"from the child" * 40
    assert len(zone) == 2


def _lock_and_die(address: int) -> None:
    libc = ctypes.CDLL(None)
    libc.pthread_mutex_lock.argtypes = [ctypes.c_void_p]
    os._exit(libc.pthread_mutex_lock(address))  # a worker killed while it holds the zone's lock


def test_a_process_that_died_holding_the_lock_costs_the_sessions_not_the_zone() -> None:
    zone = _io.SessionZone(64 * 1024)
    assert zone.store(b"before" * 4, b"session", 300)
    child = multiprocessing.get_context("fork").Process(target=_lock_and_die, args=(zone.address,))
    child.start()
    child.join(10)
    assert child.exitcode == 0  # it took the lock, and exited with it held
    # The next holder finds the sessions possibly half-written: it empties them and goes on.
    assert zone.fetch(b"before" * 4) is None
    assert len(zone) == 0
    assert zone.store(b"after" * 4, b"session", 300)
    assert zone.fetch(b"after" * 4) == b"session"
