"""The Python callbacks OpenSSL calls during handshakes, and what each context's callbacks need to know.

The callbacks of every handshake (session ticket keys, ALPN, the new-session callback's early return) are in
C, in `mailgate._io`; these are the rarer ones: the client-certificate verify callback, the shared session
cache's lookups and removals, and storing a session in it. Each exists once for the process and finds its
context's `CallbackState` by `SSL_CTX*`. They run inside the handshake with the GIL held, so they stay
small, and none lets an exception escape: a failure is logged and the operation fails safely (no
resumption, no stored session).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

from mailgate.tls.libssl import (
    GetSessionCallback,
    RemoveSessionCallback,
    VerifyCallback,
    libssl,
)
from mailgate.tls.sessions import MAX_SESSION_SIZE, SharedSessionCache
from mailgate.tls.tickets import TicketKeyRing

log = logging.getLogger("mailgate.tls")


@dataclass
class CallbackState:
    """What the callbacks of one SSL_CTX use."""

    timeout: int  # ssl_session_timeout in seconds
    shared_cache: SharedSessionCache | None = None
    ticket_keys: TicketKeyRing | None = None


_states: dict[int, CallbackState] = {}


def register(ssl_ctx: int, state: CallbackState) -> None:
    _states[ssl_ctx] = state


def unregister(ssl_ctx: int) -> None:
    _states.pop(ssl_ctx, None)


def state_of(ssl_ctx: int) -> CallbackState | None:
    return _states.get(ssl_ctx)


def _state_of_ssl(ssl: int) -> CallbackState | None:
    return _states.get(libssl.SSL_get_SSL_CTX(ssl) or 0)


def session_id(session: int) -> bytes:
    length = ctypes.c_uint()
    pointer = libssl.SSL_SESSION_get_id(session, ctypes.byref(length))
    return ctypes.string_at(pointer, length.value) if pointer else b""


def _always_accept(_ok: int, _store_ctx: int | None) -> int:
    # nginx decides after the handshake (§4.3): a bad or missing client certificate never fails it.
    return 1


def store_session(ssl: int, session: int) -> None:
    """A new session for the shared cache (`mailgate._io`'s new-session callback calls this for every
    session but a TLS 1.3 ticket's, which nginx does not store)."""
    try:
        state = _state_of_ssl(ssl)
        if state is None or state.shared_cache is None:
            return
        length = libssl.i2d_SSL_SESSION(session, None)
        if length <= 0 or length > MAX_SESSION_SIZE:
            return
        buffer = ctypes.create_string_buffer(length)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        libssl.i2d_SSL_SESSION(session, ctypes.byref(cursor))
        state.shared_cache.store(session_id(session), buffer.raw, state.timeout)
    except Exception:
        log.exception("storing a session in the shared cache failed")


def _get_session(ssl: int, id_pointer: int | None, id_length: int, copy: Any) -> int | None:
    try:
        copy[0] = 0
        state = _state_of_ssl(ssl)
        if state is None or state.shared_cache is None or id_pointer is None:
            return None
        der = state.shared_cache.fetch(ctypes.string_at(id_pointer, id_length))
        if der is None:
            return None
        buffer = ctypes.create_string_buffer(der, len(der))
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        session = libssl.d2i_SSL_SESSION(None, ctypes.byref(cursor), len(der))
        return int(session) if session else None
    except Exception:
        log.exception("reading a session from the shared cache failed")
        return None


def _remove_session(ssl_ctx: int, session: int) -> None:
    try:
        state = _states.get(ssl_ctx)
        if state is not None and state.shared_cache is not None:
            state.shared_cache.remove(session_id(session))
    except Exception:
        log.exception("removing a session from the shared cache failed")


VERIFY = VerifyCallback(_always_accept)
GET_SESSION = GetSessionCallback(_get_session)
REMOVE_SESSION = RemoveSessionCallback(_remove_session)
