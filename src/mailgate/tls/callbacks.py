"""The Python callback OpenSSL calls during handshakes, and what each context's callbacks need to know.

The callbacks of every handshake (session ticket keys, ALPN, the shared session cache's store, lookup and
removal) are in C, in `mailgate._io`; the client-certificate verify callback stays here. A context's
`CallbackState` is found by `SSL_CTX*`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from mailgate.tls.libssl import VerifyCallback, libssl
from mailgate.tls.sessions import SharedSessionCache
from mailgate.tls.tickets import TicketKeyRing


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


def session_id(session: int) -> bytes:
    length = ctypes.c_uint()
    pointer = libssl.SSL_SESSION_get_id(session, ctypes.byref(length))
    return ctypes.string_at(pointer, length.value) if pointer else b""


def _always_accept(_ok: int, _store_ctx: int | None) -> int:
    # nginx decides after the handshake (§4.3): a bad or missing client certificate never fails it.
    return 1


VERIFY = VerifyCallback(_always_accept)
