"""Certificates, keys, CA lists, CRLs and DH parameters, read the way nginx reads them (and worded as it words
its failures). Secret material (`data:` keys, passphrases) is only ever in memory and never in a message.

Every loader returns OpenSSL pointers the caller owns (and frees with `free_x509s` etc.).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from mailgate.config.errors import ConfigError
from mailgate.config.model import PemSource
from mailgate.tls.libssl import (
    BIO_CTRL_RESET,
    OSSL_STORE_INFO_PKEY,
    PemPasswordCallback,
    crypto,
    error_suffix,
    last_error_is_pem_no_start_line,
    pointer_of,
)

log = logging.getLogger("mailgate.tls")


@contextlib.contextmanager
def _bio(source: PemSource) -> Iterator[int | None]:
    """A read BIO over a file or over in-memory `data:` (the copy is wiped afterwards); None on failure."""
    if source.kind == "data":
        buffer = ctypes.create_string_buffer(source.data, len(source.data))
        bio = crypto.BIO_new_mem_buf(buffer, len(source.data))
        try:
            yield bio
        finally:
            if bio:
                crypto.BIO_free(bio)
            ctypes.memset(buffer, 0, len(source.data))
        return
    assert source.path is not None
    bio = crypto.BIO_new_file(str(source.path).encode(), b"r")
    try:
        yield bio
    finally:
        if bio:
            crypto.BIO_free(bio)


def source_name(source: PemSource) -> str:
    """How nginx names a source in messages: files by full path, `data:` elided, engine/store as written."""
    return str(source.path) if source.kind == "file" and source.path is not None else source.text


def _bio_failure(source: PemSource) -> str:
    return "BIO_new_mem_buf() failed" if source.kind == "data" else "BIO_new_file() failed"


def _read_x509_chain(bio: int, first_reader: str) -> tuple[list[int], str | None]:
    """All certificates of a PEM stream (the first read with `first_reader`); (certs, error) on failure."""
    first = getattr(crypto, first_reader)(bio, None, None, None)
    if not first:
        return [], f"{first_reader}() failed"
    chain = [first]
    while True:
        x509 = crypto.PEM_read_bio_X509(bio, None, None, None)
        if x509:
            chain.append(x509)
            continue
        if last_error_is_pem_no_start_line():
            crypto.ERR_clear_error()
            return chain, None
        free_x509s(chain)
        return [], "PEM_read_bio_X509() failed"


def load_certificate_chain(source: PemSource) -> list[int]:
    """Leaf first, then the chain exactly as the file (or `data:`) has it."""
    name = source_name(source)
    crypto.ERR_clear_error()
    with _bio(source) as bio:
        if not bio:
            raise ConfigError(f'cannot load certificate "{name}": {_bio_failure(source)}{error_suffix()}')
        chain, error = _read_x509_chain(bio, "PEM_read_bio_X509_AUX")
    if error is not None:
        raise ConfigError(f'cannot load certificate "{name}": {error}{error_suffix()}')
    return chain


def load_ca_certificates(path: Path) -> list[int]:
    """The certificates of an `ssl_client_certificate` / `ssl_trusted_certificate` file."""
    return load_certificate_chain(PemSource(kind="file", path=path, text=str(path)))


def load_crls(path: Path) -> list[int]:
    """Every CRL of an `ssl_crl` file (at least one)."""
    crypto.ERR_clear_error()
    crls: list[int] = []
    with _bio(PemSource(kind="file", path=path, text=str(path))) as bio:
        if not bio:
            raise ConfigError(f'cannot load CRL "{path}": BIO_new_file() failed{error_suffix()}')
        while True:
            crl = crypto.PEM_read_bio_X509_CRL(bio, None, None, None)
            if crl:
                crls.append(crl)
                continue
            if crls and last_error_is_pem_no_start_line():
                crypto.ERR_clear_error()
                return crls
            for item in crls:
                crypto.X509_CRL_free(item)
            raise ConfigError(f'cannot load CRL "{path}": PEM_read_bio_X509_CRL() failed{error_suffix()}')


class _Passphrases:
    """The PEM password callback over `ssl_password_file` passphrases; one passphrase is offered per read."""

    def __init__(self) -> None:
        self.current: bytes | None = None
        self.callback = PemPasswordCallback(self._provide)

    def _provide(self, buffer: int | None, size: int, rwflag: int, _userdata: int | None) -> int:
        if rwflag or self.current is None or buffer is None:
            return 0
        passphrase = self.current
        if len(passphrase) > size:
            log.error("password is truncated to %d bytes", size)
            passphrase = passphrase[:size]
        ctypes.memmove(buffer, passphrase, len(passphrase))
        return len(passphrase)


def load_private_key(source: PemSource, passwords: Sequence[bytes] | None) -> int:
    """An EVP_PKEY from a file, `data:`, `engine:name:id` or `store:uri`, trying each passphrase in turn."""
    name = source_name(source)
    crypto.ERR_clear_error()
    if source.kind == "engine":
        return _load_engine_key(source)
    if source.kind == "store":
        return _load_store_key(source, passwords)
    passphrases = _Passphrases()
    candidates: Sequence[bytes | None] = passwords if passwords else [None]
    with _bio(source) as bio:
        if not bio:
            raise ConfigError(f'cannot load certificate key "{name}": {_bio_failure(source)}{error_suffix()}')
        for attempt, passphrase in enumerate(candidates):
            passphrases.current = passphrase
            key = crypto.PEM_read_bio_PrivateKey(bio, None, pointer_of(passphrases.callback), None)
            if key:
                crypto.ERR_clear_error()
                return int(key)
            if attempt + 1 < len(candidates):
                crypto.ERR_clear_error()
                crypto.BIO_ctrl(bio, BIO_CTRL_RESET, 0, None)
        passphrases.current = None
    raise ConfigError(
        f'cannot load certificate key "{name}": PEM_read_bio_PrivateKey() failed{error_suffix()}'
    )


def _load_engine_key(source: PemSource) -> int:
    name = source_name(source)
    if source.engine is None or source.key_id is None:
        raise ConfigError(f'cannot load certificate key "{name}": invalid syntax')
    engine = crypto.ENGINE_by_id(source.engine.encode())
    if not engine:
        raise ConfigError(f'cannot load certificate key "{name}": ENGINE_by_id() failed{error_suffix()}')
    try:
        key = crypto.ENGINE_load_private_key(engine, source.key_id.encode(), None, None)
    finally:
        crypto.ENGINE_free(engine)
    if not key:
        raise ConfigError(
            f'cannot load certificate key "{name}": ENGINE_load_private_key() failed{error_suffix()}'
        )
    return int(key)


def _load_store_key(source: PemSource, passwords: Sequence[bytes] | None) -> int:
    name = source_name(source)
    if not source.uri:
        raise ConfigError(f'cannot load certificate key "{name}": invalid syntax')
    passphrases = _Passphrases()
    # Only the first passphrase is offered to a store (nginx has no retry loop there).
    passphrases.current = passwords[0] if passwords else None
    ui_method = crypto.UI_UTIL_wrap_read_pem_callback(pointer_of(passphrases.callback), 0)
    store = crypto.OSSL_STORE_open(source.uri.encode(), ui_method, None, None, None)
    try:
        if not store:
            raise ConfigError(
                f'cannot load certificate key "{name}": OSSL_STORE_open() failed{error_suffix()}'
            )
        while not crypto.OSSL_STORE_eof(store):
            info = crypto.OSSL_STORE_load(store)
            if not info:
                if crypto.OSSL_STORE_error(store):
                    break
                continue
            try:
                if crypto.OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY:
                    key = crypto.OSSL_STORE_INFO_get1_PKEY(info)
                    if key:
                        crypto.ERR_clear_error()
                        return int(key)
            finally:
                crypto.OSSL_STORE_INFO_free(info)
        raise ConfigError(f'cannot load certificate key "{name}": OSSL_STORE_load() failed{error_suffix()}')
    finally:
        if store:
            crypto.OSSL_STORE_close(store)
        if ui_method:
            crypto.UI_destroy_method(ui_method)


def load_dh_parameters(path: Path) -> int:
    """An EVP_PKEY of DH parameters (OpenSSL 3: PEM_read_bio_Parameters)."""
    crypto.ERR_clear_error()
    with _bio(PemSource(kind="file", path=path, text=str(path))) as bio:
        if not bio:
            raise ConfigError(f'BIO_new_file("{path}") failed{error_suffix()}')
        parameters = crypto.PEM_read_bio_Parameters(bio, None)
    if not parameters:
        raise ConfigError(f'PEM_read_bio_Parameters("{path}") failed{error_suffix()}')
    return int(parameters)


def free_x509s(certificates: Sequence[int]) -> None:
    for x509 in certificates:
        crypto.X509_free(x509)
