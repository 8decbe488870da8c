"""A server's SSL context, configured step by step as nginx's ngx_mail_ssl_module configures its SSL_CTX."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path

from mailgate._io import install_context_callbacks
from mailgate.config.errors import ConfigError
from mailgate.config.model import PemSource, ServerConfig, SourceRef, VerifyClient
from mailgate.tls import callbacks
from mailgate.tls.certificates import (
    free_x509s,
    load_ca_certificates,
    load_certificate_chain,
    load_crls,
    load_dh_parameters,
    load_private_key,
    source_name,
)
from mailgate.tls.libssl import (
    SSL_CONF_FLAG_CERTIFICATE,
    SSL_CONF_FLAG_CLIENT,
    SSL_CONF_FLAG_FILE,
    SSL_CONF_FLAG_SERVER,
    SSL_CONF_FLAG_SHOW_ERRORS,
    SSL_CONF_TYPE_DIR,
    SSL_CONF_TYPE_FILE,
    SSL_CTRL_CHAIN,
    SSL_CTRL_MODE,
    SSL_CTRL_SET_GROUPS_LIST,
    SSL_CTRL_SET_MAX_PROTO_VERSION,
    SSL_CTRL_SET_MIN_PROTO_VERSION,
    SSL_CTRL_SET_SESS_CACHE_MODE,
    SSL_CTRL_SET_SESS_CACHE_SIZE,
    SSL_MODE_NO_AUTO_CHAIN,
    SSL_MODE_RELEASE_BUFFERS,
    SSL_OP_ALL_BITS,
    SSL_OP_CIPHER_SERVER_PREFERENCE,
    SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS,
    SSL_OP_IGNORE_UNEXPECTED_EOF,
    SSL_OP_NO_ANTI_REPLAY,
    SSL_OP_NO_COMPRESSION,
    SSL_OP_NO_RENEGOTIATION,
    SSL_OP_NO_TICKET,
    SSL_SESS_CACHE_NO_AUTO_CLEAR,
    SSL_SESS_CACHE_NO_INTERNAL,
    SSL_SESS_CACHE_NO_INTERNAL_STORE,
    SSL_SESS_CACHE_OFF,
    SSL_SESS_CACHE_SERVER,
    SSL_VERIFY_PEER,
    TLS1_3_VERSION,
    X509_V_FLAG_CRL_CHECK,
    X509_V_FLAG_CRL_CHECK_ALL,
    SSL_OP_NO_SSLv3,
    SSL_OP_NO_TLSv1,
    SSL_OP_NO_TLSv1_1,
    SSL_OP_NO_TLSv1_2,
    SSL_OP_NO_TLSv1_3,
    crypto,
    error_suffix,
    libssl,
    pointer_of,
    ssl_ctx_of,
)
from mailgate.tls.sessions import SharedSessionCache, shared_cache
from mailgate.tls.tickets import TicketKeyRing, read_ticket_key_file

_PROTOCOL_OPTIONS = (
    ("SSLv3", SSL_OP_NO_SSLv3),
    ("TLSv1", SSL_OP_NO_TLSv1),
    ("TLSv1.1", SSL_OP_NO_TLSv1_1),
    ("TLSv1.2", SSL_OP_NO_TLSv1_2),
    ("TLSv1.3", SSL_OP_NO_TLSv1_3),
)

# Fixed options nginx sets on every context (ngx_ssl_create), on top of OpenSSL's own defaults.
_NGINX_OPTIONS = (
    SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS
    | SSL_OP_NO_COMPRESSION
    | SSL_OP_NO_ANTI_REPLAY
    | SSL_OP_IGNORE_UNEXPECTED_EOF
    | SSL_OP_NO_RENEGOTIATION
)


@dataclass(frozen=True, eq=False)
class ServerTls:
    """One server's TLS: `ssl_ctx` (the `SSL_CTX*` of `context`) is what client connections are made
    from (`Peer.start_tls`); the rest is for inspection."""

    context: ssl.SSLContext
    server: ServerConfig
    session_id_context: bytes  # what nginx would compute: SHA-1 of "MAIL", certificates, client CA names
    shared_cache: SharedSessionCache | None = None
    warnings: tuple[str, ...] = ()  # nginx's [warn] lines for this context (the caller logs them)

    @functools.cached_property
    def ssl_ctx(self) -> int:
        return ssl_ctx_of(self.context)


@dataclass(frozen=True)
class _OpenSslDefaults:
    options: int
    security_level: int


@functools.cache
def _openssl_defaults() -> _OpenSslDefaults:
    """What a fresh SSL_CTX gets (system openssl.cnf included), before Python's ssl changes it."""
    scratch = libssl.SSL_CTX_new(libssl.TLS_server_method())
    if not scratch:
        raise ConfigError(f"SSL_CTX_new() failed{error_suffix()}")
    try:
        return _OpenSslDefaults(
            options=libssl.SSL_CTX_get_options(scratch),
            security_level=libssl.SSL_CTX_get_security_level(scratch),
        )
    finally:
        libssl.SSL_CTX_free(scratch)


def _tls_directive(server: ServerConfig) -> tuple[str, SourceRef | None]:
    """Which directive needs TLS, and where it is, for `no "ssl_certificate" is defined for ...`."""
    for listen in server.listens:
        if listen.ssl:
            return "listen ... ssl", listen.source
    return "starttls", server.ssl.starttls_source


def build_server_context(server: ServerConfig, *, prefix: Path | None = None) -> ServerTls:
    """Build the SSL context of one server that has `listen ... ssl` or STARTTLS.

    Raises ConfigError worded as nginx words it (certificate, key, cipher, curve, DH, CA, CRL, ticket key and
    ssl_conf_command failures). `prefix` resolves relative file values of `ssl_conf_command` (nginx's
    configuration prefix); it defaults to the directory of the server's configuration file.
    """
    settings = server.ssl
    mode, where = _tls_directive(server)
    if not settings.certificates:
        raise ConfigError(
            f'no "ssl_certificate" is defined for the "{mode}" directive in {where or server.source}'
        )

    crypto.ERR_clear_error()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx = ssl_ctx_of(context)
    _set_fixed_options(ctx, settings.protocols)

    if libssl.SSL_CTX_set_cipher_list(ctx, settings.ciphers.encode()) == 0:
        raise ConfigError(f'SSL_CTX_set_cipher_list("{settings.ciphers}") failed{error_suffix()}')
    if settings.prefer_server_ciphers:
        libssl.SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE)

    warnings: list[str] = []
    if settings.certificate_compression:
        # RFC 8879 compression needs OpenSSL 3.2+; nginx warns and goes on without it.
        warnings.append('"ssl_certificate_compression" ignored, not supported')

    certificate_hashes = [
        _use_certificate(ctx, pair.certificate, pair.key, settings.passwords)
        for pair in settings.certificates
    ]

    if settings.verify_client is not VerifyClient.OFF:
        _configure_client_verification(server, ctx)

    if settings.dhparam is not None:
        parameters = load_dh_parameters(settings.dhparam)
        if libssl.SSL_CTX_set0_tmp_dh_pkey(ctx, parameters) != 1:
            crypto.EVP_PKEY_free(parameters)
            raise ConfigError(f'SSL_CTX_set0_tmp_dh_pkey("{settings.dhparam}") failed{error_suffix()}')

    curves = settings.ecdh_curve
    if curves != "auto" and libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, 0, curves.encode()) == 0:
        raise ConfigError(f'SSL_CTX_set1_curves_list("{settings.ecdh_curve}") failed{error_suffix()}')

    session_id_context = _session_id_context(ctx, certificate_hashes)
    zone = _configure_session_cache(server, ctx)

    if not settings.session_tickets:
        libssl.SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
    ticket_keys = _ticket_key_ring(server, zone)
    session_timeout = int(settings.session_timeout)
    install_context_callbacks(
        ctx,
        server.protocol.value.encode(),
        ticket_keys=functools.partial(ticket_keys.snapshot, session_timeout) if ticket_keys else None,
        session_zone=zone.zone if zone is not None else None,
    )

    _apply_conf_commands(ctx, settings.conf_commands, prefix or Path(server.source.file).parent)

    state = callbacks.CallbackState(
        timeout=session_timeout,
        shared_cache=zone,
        ticket_keys=ticket_keys,
    )
    callbacks.register(ctx, state)
    weakref.finalize(context, callbacks.unregister, ctx)
    return ServerTls(
        context=context,
        server=server,
        session_id_context=session_id_context,
        shared_cache=zone,
        warnings=tuple(warnings),
    )


def _set_fixed_options(ctx: int, protocols: frozenset[str]) -> None:
    """Undo what Python's ssl set (options, security level, minimum version), then apply nginx's."""
    defaults = _openssl_defaults()
    options = defaults.options | _NGINX_OPTIONS
    for name, option in _PROTOCOL_OPTIONS:
        if name not in protocols:
            options |= option
    libssl.SSL_CTX_clear_options(ctx, SSL_OP_ALL_BITS)
    libssl.SSL_CTX_set_options(ctx, options)
    libssl.SSL_CTX_set_security_level(ctx, defaults.security_level)
    libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, 0, None)
    libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MAX_PROTO_VERSION, TLS1_3_VERSION, None)
    libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN, None)
    # No read-ahead, unlike nginx: it saves no syscall on a memory BIO, and uvloop reads only while the BIO
    # or SSL_pending() has bytes, so a record read ahead (pipelined behind another) would wait for more input.


def _use_certificate(
    ctx: int, certificate: PemSource, key: PemSource, passwords: tuple[bytes, ...] | None
) -> bytes:
    """Install one certificate (with its chain from the same source only) and its key; its SHA-1."""
    chain = load_certificate_chain(certificate)
    leaf, intermediates = chain[0], chain[1:]
    try:
        if libssl.SSL_CTX_use_certificate(ctx, leaf) == 0:
            free_x509s(intermediates)
            raise ConfigError(f'SSL_CTX_use_certificate("{source_name(certificate)}") failed{error_suffix()}')
        digest = _x509_sha1(leaf)
    finally:
        crypto.X509_free(leaf)
    stack = crypto.OPENSSL_sk_new_null()
    for x509 in intermediates:
        crypto.OPENSSL_sk_push(stack, x509)
    if libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN, 0, stack) == 0:
        free_x509s(intermediates)
        crypto.OPENSSL_sk_free(stack)
        raise ConfigError(f'SSL_CTX_set0_chain("{source_name(certificate)}") failed{error_suffix()}')
    private_key = load_private_key(key, passwords)
    try:
        if libssl.SSL_CTX_use_PrivateKey(ctx, private_key) == 0:
            raise ConfigError(f'SSL_CTX_use_PrivateKey("{source_name(key)}") failed{error_suffix()}')
    finally:
        crypto.EVP_PKEY_free(private_key)
    return digest


def _x509_sha1(x509: int) -> bytes:
    buffer = ctypes.create_string_buffer(64)
    length = ctypes.c_uint()
    if crypto.X509_digest(x509, crypto.EVP_sha1(), buffer, ctypes.byref(length)) == 0:
        raise ConfigError(f"X509_digest() failed{error_suffix()}")
    return buffer.raw[: length.value]


def _configure_client_verification(server: ServerConfig, ctx: int) -> None:
    settings = server.ssl
    if (
        settings.verify_client is not VerifyClient.OPTIONAL_NO_CA
        and settings.client_certificate is None
        and settings.trusted_certificate is None
    ):
        raise ConfigError("no ssl_client_certificate or ssl_trusted_certificate for ssl_verify_client")
    libssl.SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, pointer_of(callbacks.VERIFY))
    libssl.SSL_CTX_set_verify_depth(ctx, settings.verify_depth)
    store = libssl.SSL_CTX_get_cert_store(ctx)
    if settings.client_certificate is not None:
        names = crypto.OPENSSL_sk_new_null()
        certificates = load_ca_certificates(settings.client_certificate)
        try:
            for x509 in certificates:
                _add_to_store(store, x509, settings.client_certificate)
                _push_unique_name(names, crypto.X509_get_subject_name(x509))
        finally:
            free_x509s(certificates)
        libssl.SSL_CTX_set_client_CA_list(ctx, names)
    if settings.trusted_certificate is not None:
        certificates = load_ca_certificates(settings.trusted_certificate)
        try:
            for x509 in certificates:
                _add_to_store(store, x509, settings.trusted_certificate)
        finally:
            free_x509s(certificates)
    if settings.crl is not None:
        crls = load_crls(settings.crl)
        try:
            for crl in crls:
                if crypto.X509_STORE_add_crl(store, crl) != 1:
                    raise ConfigError(f'X509_STORE_add_crl("{settings.crl}") failed{error_suffix()}')
        finally:
            for crl in crls:
                crypto.X509_CRL_free(crl)
        crypto.X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL)


def _add_to_store(store: int, x509: int, path: Path) -> None:
    if crypto.X509_STORE_add_cert(store, x509) != 1:
        raise ConfigError(f'X509_STORE_add_cert("{path}") failed{error_suffix()}')


def _push_unique_name(names: int, name: int) -> None:
    for index in range(crypto.OPENSSL_sk_num(names)):
        if crypto.X509_NAME_cmp(crypto.OPENSSL_sk_value(names, index), name) == 0:
            return
    crypto.OPENSSL_sk_push(names, crypto.X509_NAME_dup(name))


def _session_id_context(ctx: int, certificate_hashes: list[bytes]) -> bytes:
    """SHA-1 of "MAIL", each server certificate's SHA-1, each client CA name's SHA-1 (nginx's recipe)."""
    digest = hashlib.sha1(b"MAIL")
    for certificate_hash in certificate_hashes:
        digest.update(certificate_hash)
    names = libssl.SSL_CTX_get_client_CA_list(ctx)
    if names:
        buffer = ctypes.create_string_buffer(64)
        length = ctypes.c_uint()
        for index in range(crypto.OPENSSL_sk_num(names)):
            name = crypto.OPENSSL_sk_value(names, index)
            if crypto.X509_NAME_digest(name, crypto.EVP_sha1(), buffer, ctypes.byref(length)) == 0:
                raise ConfigError(f"X509_NAME_digest() failed{error_suffix()}")
            digest.update(buffer.raw[: length.value])
    value = digest.digest()
    if libssl.SSL_CTX_set_session_id_context(ctx, value, len(value)) == 0:
        raise ConfigError(f"SSL_CTX_set_session_id_context() failed{error_suffix()}")
    return value


def _configure_session_cache(server: ServerConfig, ctx: int) -> SharedSessionCache | None:
    settings = server.ssl
    cache = settings.session_cache
    libssl.SSL_CTX_set_timeout(ctx, int(settings.session_timeout))
    if cache.mode == "off":
        libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, None)
        return None
    if cache.mode == "none":
        # Hand out session ids (some old clients need them) but never store a session.
        mode = SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR | SSL_SESS_CACHE_NO_INTERNAL_STORE
        libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)
        libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_SIZE, 1, None)
        return None
    mode = SSL_SESS_CACHE_SERVER
    if cache.shared is not None and not cache.builtin:
        mode |= SSL_SESS_CACHE_NO_INTERNAL
    libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)
    if cache.builtin:
        libssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_SIZE, cache.builtin_size, None)
    if cache.shared is None:
        return None
    return shared_cache(cache.shared.name, cache.shared.size)


def _ticket_key_ring(server: ServerConfig, zone: SharedSessionCache | None) -> TicketKeyRing | None:
    settings = server.ssl
    if settings.session_ticket_keys:
        return TicketKeyRing([read_ticket_key_file(path) for path in settings.session_ticket_keys])
    if zone is not None:
        return TicketKeyRing(shared=zone)
    return None


def _apply_conf_commands(ctx: int, commands: tuple[tuple[str, str], ...], prefix: Path) -> None:
    """`ssl_conf_command`s, applied last with nginx's flags; relative file values are under `prefix`."""
    if not commands:
        return
    conf = libssl.SSL_CONF_CTX_new()
    if not conf:
        raise ConfigError(f"SSL_CONF_CTX_new() failed{error_suffix()}")
    try:
        for flag in (
            SSL_CONF_FLAG_FILE,
            SSL_CONF_FLAG_SERVER,
            SSL_CONF_FLAG_CLIENT,
            SSL_CONF_FLAG_CERTIFICATE,
            SSL_CONF_FLAG_SHOW_ERRORS,
        ):
            libssl.SSL_CONF_CTX_set_flags(conf, flag)
        libssl.SSL_CONF_CTX_set_ssl_ctx(conf, ctx)
        for name, written in commands:
            value = written
            value_type = libssl.SSL_CONF_cmd_value_type(conf, name.encode())
            if value_type in (SSL_CONF_TYPE_FILE, SSL_CONF_TYPE_DIR) and not Path(value).is_absolute():
                value = str(prefix / value)
            if libssl.SSL_CONF_cmd(conf, name.encode(), value.encode()) <= 0:
                raise ConfigError(f'SSL_CONF_cmd("{name}", "{value}") failed{error_suffix()}')
        if libssl.SSL_CONF_CTX_finish(conf) != 1:
            raise ConfigError(f"SSL_CONF_finish() failed{error_suffix()}")
    finally:
        libssl.SSL_CONF_CTX_free(conf)
