"""The C callbacks OpenSSL calls during handshakes, and what each context's callbacks need to know.

Each callback exists once for the process and finds its context's `CallbackState` by `SSL_CTX*`. They run
inside the handshake with the GIL held, so they stay small, and none lets an exception escape: a failure is
logged and the operation fails safely (no resumption, no ticket, a fatal ALPN alert).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

from mailgate.tls.libssl import (
    SSL_OP_NO_TICKET,
    SSL_TLSEXT_ERR_ALERT_FATAL,
    SSL_TLSEXT_ERR_OK,
    TLS1_3_VERSION,
    AlpnSelectCallback,
    GetSessionCallback,
    NewSessionCallback,
    RemoveSessionCallback,
    TicketKeyCallback,
    VerifyCallback,
    crypto,
    libssl,
)
from mailgate.tls.sessions import MAX_SESSION_SIZE, SharedSessionCache
from mailgate.tls.tickets import TicketKeyRing

log = logging.getLogger("mailgate.tls")


@dataclass
class CallbackState:
    """What the callbacks of one SSL_CTX use."""

    alpn: bytes  # the protocol name this server answers to (`imap`, `pop3`, `smtp`)
    timeout: int  # ssl_session_timeout in seconds
    shared_cache: SharedSessionCache | None = None
    ticket_keys: TicketKeyRing | None = None


_states: dict[int, CallbackState] = {}
_alpn_names: dict[bytes, Any] = {}  # persistent buffers OpenSSL may point into after the callback returns


def register(ssl_ctx: int, state: CallbackState) -> None:
    if state.alpn not in _alpn_names:
        _alpn_names[state.alpn] = ctypes.create_string_buffer(state.alpn, len(state.alpn))
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


def _select_alpn(
    ssl: int, out: Any, outlen: Any, client_list: int | None, client_length: int, _arg: int | None
) -> int:
    try:
        state = _state_of_ssl(ssl)
        if state is None or client_list is None:
            return SSL_TLSEXT_ERR_ALERT_FATAL
        offered = ctypes.string_at(client_list, client_length)
        position = 0
        while position < len(offered):
            length = offered[position]
            if offered[position + 1 : position + 1 + length] == state.alpn:
                out[0] = ctypes.addressof(_alpn_names[state.alpn])
                outlen[0] = len(state.alpn)
                return SSL_TLSEXT_ERR_OK
            position += 1 + length
        return SSL_TLSEXT_ERR_ALERT_FATAL
    except Exception:
        log.exception("ALPN selection failed")
        return SSL_TLSEXT_ERR_ALERT_FATAL


def _new_session(ssl: int, session: int) -> int:
    try:
        state = _state_of_ssl(ssl)
        if state is None or state.shared_cache is None:
            return 0
        # OpenSSL reports TLS 1.3 sessions even when a ticket carries them; nginx does not store those.
        if libssl.SSL_version(ssl) == TLS1_3_VERSION and not libssl.SSL_get_options(ssl) & SSL_OP_NO_TICKET:
            return 0
        length = libssl.i2d_SSL_SESSION(session, None)
        if length <= 0 or length > MAX_SESSION_SIZE:
            return 0
        buffer = ctypes.create_string_buffer(length)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        libssl.i2d_SSL_SESSION(session, ctypes.byref(cursor))
        state.shared_cache.store(session_id(session), buffer.raw, state.timeout)
    except Exception:
        log.exception("storing a session in the shared cache failed")
    return 0  # OpenSSL keeps its own reference


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


# Static objects of libcrypto, looked up once rather than through ctypes on every ticket.
_SHA256 = crypto.EVP_sha256()
_AES_128_CBC = crypto.EVP_aes_128_cbc()
_AES_256_CBC = crypto.EVP_aes_256_cbc()
_AES_IV_LENGTH = crypto.EVP_CIPHER_get_iv_length(_AES_128_CBC)


def _ticket_key(  # noqa: PLR0917 - the C callback's signature
    ssl: int, name: int, iv: int, cipher_ctx: int, hmac_ctx: int, encrypt: int
) -> int:
    try:
        state = _state_of_ssl(ssl)
        if state is None or state.ticket_keys is None:
            return -1
        keys = state.ticket_keys.current(state.timeout)
        digest = _SHA256
        if encrypt == 1:
            key = keys[0]
            cipher = _AES_128_CBC if key.size == 48 else _AES_256_CBC
            if crypto.RAND_bytes(iv, _AES_IV_LENGTH) != 1:
                return -1
            if crypto.EVP_EncryptInit_ex(cipher_ctx, cipher, None, key.aes_key, iv) != 1:
                return -1
            if crypto.HMAC_Init_ex(hmac_ctx, key.hmac_key, len(key.hmac_key), digest, None) != 1:
                return -1
            ctypes.memmove(name, key.name, 16)
            return 1
        wanted = ctypes.string_at(name, 16)
        index = next((position for position, key in enumerate(keys) if key.name == wanted), None)
        if index is None:
            return 0  # unknown key: a full handshake, and a fresh ticket
        key = keys[index]
        cipher = _AES_128_CBC if key.size == 48 else _AES_256_CBC
        if crypto.HMAC_Init_ex(hmac_ctx, key.hmac_key, len(key.hmac_key), digest, None) != 1:
            return -1
        if crypto.EVP_DecryptInit_ex(cipher_ctx, cipher, None, key.aes_key, iv) != 1:
            return -1
        if libssl.SSL_version(ssl) == TLS1_3_VERSION:
            return 2
        return 2 if index != 0 and key.expire else 1
    except Exception:
        log.exception("session ticket key callback failed")
        return -1


VERIFY = VerifyCallback(_always_accept)
ALPN_SELECT = AlpnSelectCallback(_select_alpn)
NEW_SESSION = NewSessionCallback(_new_session)
GET_SESSION = GetSessionCallback(_get_session)
REMOVE_SESSION = RemoveSessionCallback(_remove_session)
TICKET_KEY = TicketKeyCallback(_ticket_key)
