"""ngx_mail_ssl_module: `starttls` and the `ssl_*` directives.

Only servers with `listen ... ssl` or an effective `starttls on|only` need TLS; for them the merge checks
what nginx checks without OpenSSL (certificate and key presence, CA for `ssl_verify_client`, ticket key
file sizes). Loading certificates, keys, ciphers and curves belongs to `mailgate.tls`.

Differences from nginx: the removed `ssl` directive gets a message pointing to `listen ... ssl` (nginx
1.25.1+ says `unknown directive "ssl"`, 1.22 only warns); `ssl_certificate_compression on` on a TLS
server is an error when the OpenSSL in use lacks certificate compression (before 3.2), where nginx would
go on without it.
"""

from __future__ import annotations

import os
import ssl as _openssl
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.config.directives import (
    Context,
    Directive,
    DirectiveCall,
    MergeContext,
    Shape,
    bitmask_slot,
    enum_slot,
    flag_slot,
    inherit,
    inherit_list,
    keyval_slot,
    num_slot,
    sec_slot,
    str_list_slot,
    str_slot,
)
from mailgate.config.errors import ConfigError, conf_error
from mailgate.config.model import (
    SSL_PROTOCOL_NAMES,
    CertificatePair,
    PemSource,
    SessionCache,
    SharedCacheZone,
    SourceRef,
    SslSettings,
    StartTls,
    VerifyClient,
)
from mailgate.config.values import PAGE_SIZE, atoi, c_string, parse_size, shown

PASSWORD_BUFFER = 4096  # NGX_SSL_PASSWORD_BUFFER_SIZE

# ssl_session_cache's built-in part, as nginx encodes it (a size >= 0 means `builtin:SIZE`).
_CACHE_OFF = -2
_CACHE_NONE = -3
_CACHE_SHARED_ONLY = -4
_CACHE_BUILTIN_DEFAULT = -5
_BUILTIN_DEFAULT_SIZE = 20480

_DEFAULT_PROTOCOLS = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"})
_DEFAULT_CIPHERS = "HIGH:!aNULL:!MD5"


def certificate_compression_available() -> bool:
    """RFC 8879 certificate compression needs OpenSSL 3.2 or newer."""
    return _openssl.OPENSSL_VERSION_INFO >= (3, 2)


@dataclass
class SslConf:
    starttls: StartTls | None = None
    listen_ssl: bool = False
    # The last `listen ... ssl`, else `starttls` (nginx's scf->file/line).
    tls_source: SourceRef | None = None
    certificates: list[str] = field(default_factory=list)
    certificate_keys: list[str] = field(default_factory=list)
    passwords: list[bytes] | None = None
    password_file: str | None = None
    certificate_compression: bool | None = None
    certificate_compression_source: SourceRef | None = None
    dhparam: str | None = None
    ecdh_curve: str | None = None
    protocols: set[str] = field(default_factory=set)
    ciphers: str | None = None
    prefer_server_ciphers: bool | None = None
    session_cache_builtin: int | None = None
    session_cache_shared: SharedCacheZone | None = None
    session_tickets: bool | None = None
    session_ticket_keys: list[str] = field(default_factory=list)
    session_timeout: float | None = None
    verify_client: VerifyClient | None = None
    verify_depth: int | None = None
    client_certificate: str | None = None
    trusted_certificate: str | None = None
    crl: str | None = None
    conf_commands: list[tuple[str, str]] = field(default_factory=list)


def _removed_ssl(call: DirectiveCall, conf: SslConf) -> None:
    raise call.error('the "ssl" directive is no longer supported, use the "listen ... ssl" directive instead')


def _starttls(call: DirectiveCall, conf: SslConf) -> None:
    enum_slot("starttls", {mode.value: mode for mode in StartTls})(call, conf)
    if not conf.listen_ssl:
        conf.tls_source = call.source


def _password_file(call: DirectiveCall, conf: SslConf) -> None:
    if conf.passwords is not None:
        raise call.invalid("is duplicate")
    name = call.loader.conf_path(call.args[0])
    conf.passwords = read_password_file(call, name)
    conf.password_file = name


def read_password_file(call: DirectiveCall, name: str) -> list[bytes]:
    """ngx_ssl_read_password_file: one passphrase a line (LF, optional CR), empty lines skipped.

    A line of 4096 bytes or more is refused; a file without passphrases gives one empty passphrase.
    Reads until end of file, so a FIFO works.
    """
    try:
        descriptor = os.open(c_string(name), os.O_RDONLY)
    except OSError as error:
        raise call.error(f'open() "{shown(name)}" failed ({error.errno}: {error.strerror})') from None
    passwords: list[bytes] = []
    pending = b""
    try:
        while True:
            try:
                chunk = os.read(descriptor, PASSWORD_BUFFER - len(pending))
            except OSError as error:
                raise call.error(f'read() "{shown(name)}" failed ({error.errno}: {error.strerror})') from None
            data = pending + chunk
            if pending and not chunk:
                data += b"\n"
            *lines, pending = data.split(b"\n")
            passwords.extend(line.removesuffix(b"\r") for line in lines if line.removesuffix(b"\r"))
            if len(pending) == PASSWORD_BUFFER:
                raise call.error(f'too long line in "{shown(name)}"')
            if not chunk:
                break
    finally:
        os.close(descriptor)
    return passwords or [b""]


def _certificate_compression(call: DirectiveCall, conf: SslConf) -> None:
    flag_slot("certificate_compression")(call, conf)
    conf.certificate_compression_source = call.source


def _session_cache(call: DirectiveCall, conf: SslConf) -> None:
    """`off | none | [builtin[:size]] [shared:name:size]`, tokens applied left to right."""
    for token in call.args:
        if token == "off":
            conf.session_cache_builtin = _CACHE_OFF
        elif token == "none":
            conf.session_cache_builtin = _CACHE_NONE
        elif token == "builtin":
            conf.session_cache_builtin = _CACHE_BUILTIN_DEFAULT
        elif token.startswith("builtin:") and len(token) > len("builtin:"):
            size = atoi(token[len("builtin:") :])
            if size is None:
                raise call.error(f'invalid session cache "{shown(token)}"')
            conf.session_cache_builtin = size
        elif token.startswith("shared:") and len(token) > len("shared:"):
            name, colon, size_text = token[len("shared:") :].partition(":")
            size = parse_size(size_text) if name and colon else None
            if size is None:
                raise call.error(f'invalid session cache "{shown(token)}"')
            if size < 8 * PAGE_SIZE:
                raise call.error(f'session cache "{shown(token)}" is too small')
            conflict = call.loader.shared_zone(name, size)
            if conflict is not None:
                raise call.error(conflict)
            conf.session_cache_shared = SharedCacheZone(name, size)
        else:
            raise call.error(f'invalid session cache "{shown(token)}"')
    if conf.session_cache_shared is not None and conf.session_cache_builtin is None:
        conf.session_cache_builtin = _CACHE_SHARED_ONLY


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("ssl", _M_S, Shape.FLAG, _removed_ssl, SslConf),
    Directive("starttls", _M_S, Shape.TAKE1, _starttls, SslConf),
    Directive("ssl_certificate", _M_S, Shape.TAKE1, str_list_slot("certificates"), SslConf),
    Directive("ssl_certificate_key", _M_S, Shape.TAKE1, str_list_slot("certificate_keys"), SslConf),
    Directive("ssl_password_file", _M_S, Shape.TAKE1, _password_file, SslConf),
    Directive("ssl_certificate_compression", _M_S, Shape.FLAG, _certificate_compression, SslConf),
    Directive("ssl_dhparam", _M_S, Shape.TAKE1, str_slot("dhparam"), SslConf),
    Directive("ssl_ecdh_curve", _M_S, Shape.TAKE1, str_slot("ecdh_curve"), SslConf),
    Directive(
        "ssl_protocols",
        _M_S,
        Shape.ONE_MORE,
        bitmask_slot("protocols", {name: name for name in SSL_PROTOCOL_NAMES}),
        SslConf,
    ),
    Directive("ssl_ciphers", _M_S, Shape.TAKE1, str_slot("ciphers"), SslConf),
    Directive("ssl_prefer_server_ciphers", _M_S, Shape.FLAG, flag_slot("prefer_server_ciphers"), SslConf),
    Directive("ssl_session_cache", _M_S, Shape.TAKE12, _session_cache, SslConf),
    Directive("ssl_session_tickets", _M_S, Shape.FLAG, flag_slot("session_tickets"), SslConf),
    Directive("ssl_session_ticket_key", _M_S, Shape.TAKE1, str_list_slot("session_ticket_keys"), SslConf),
    Directive("ssl_session_timeout", _M_S, Shape.TAKE1, sec_slot("session_timeout"), SslConf),
    Directive(
        "ssl_verify_client",
        _M_S,
        Shape.TAKE1,
        enum_slot("verify_client", {mode.value: mode for mode in VerifyClient}),
        SslConf,
    ),
    Directive("ssl_verify_depth", _M_S, Shape.TAKE1, num_slot("verify_depth"), SslConf),
    Directive("ssl_client_certificate", _M_S, Shape.TAKE1, str_slot("client_certificate"), SslConf),
    Directive("ssl_trusted_certificate", _M_S, Shape.TAKE1, str_slot("trusted_certificate"), SslConf),
    Directive("ssl_crl", _M_S, Shape.TAKE1, str_slot("crl"), SslConf),
    Directive("ssl_conf_command", _M_S, Shape.TAKE2, keyval_slot("conf_commands"), SslConf),
)


# ---------------------------------------------------------------------------------------------------------
# Merge


def pem_source(value: str, conf_path: str, *, key: bool) -> PemSource:
    """A certificate or key value: a file, `data:PEM`, or (keys) `engine:NAME:ID` / `store:URI`.

    `text` is what messages show: the full file name, or `data:...` so inline PEM never reaches a log.
    `engine:` without a second colon keeps `key_id` None (`mailgate.tls` reports `invalid syntax`).
    """
    if value.startswith("data:"):
        return PemSource(kind="data", data=value[5:].encode("utf-8", "surrogateescape"), text="data:...")
    if key and value.startswith("engine:"):
        engine, colon, key_id = value[len("engine:") :].partition(":")
        return PemSource(kind="engine", engine=engine, key_id=key_id if colon else None, text=value)
    if key and value.startswith("store:"):
        return PemSource(kind="store", uri=value[len("store:") :], text=value)
    return PemSource(kind="file", path=Path(conf_path), text=conf_path)


def _shown_certificate(value: str) -> str:
    return "data:..." if value.startswith("data:") else shown(value)


def _session_cache_settings(builtin: int, shared: SharedCacheZone | None) -> SessionCache:
    if builtin == _CACHE_OFF:
        return SessionCache(mode="off")
    if builtin == _CACHE_NONE:
        return SessionCache(mode="none")
    if builtin == _CACHE_SHARED_ONLY:
        return SessionCache(mode="cache", builtin=False, shared=shared)
    size = _BUILTIN_DEFAULT_SIZE if builtin == _CACHE_BUILTIN_DEFAULT else builtin
    return SessionCache(mode="cache", builtin=True, builtin_size=size, shared=shared)


def merge(context: MergeContext, mail: SslConf, server: SslConf) -> SslSettings:
    """ngx_mail_ssl_merge_conf without the OpenSSL part; TLS servers get nginx's presence checks."""
    starttls = inherit(server.starttls, mail.starttls, StartTls.OFF)
    certificates = server.certificates or mail.certificates
    keys = server.certificate_keys or mail.certificate_keys
    source = server.tls_source or mail.tls_source
    passwords = server.passwords if server.passwords is not None else mail.passwords
    password_file = server.password_file if server.passwords is not None else mail.password_file
    compression = inherit(server.certificate_compression, mail.certificate_compression, False)
    verify = inherit(server.verify_client, mail.verify_client, VerifyClient.OFF)
    client_certificate = inherit(server.client_certificate, mail.client_certificate, "")
    trusted_certificate = inherit(server.trusted_certificate, mail.trusted_certificate, "")
    ticket_keys = server.session_ticket_keys or mail.session_ticket_keys
    builtin = inherit(server.session_cache_builtin, mail.session_cache_builtin, _CACHE_NONE)
    shared = server.session_cache_shared or mail.session_cache_shared

    mode = "listen ... ssl" if server.listen_ssl else "starttls" if starttls is not StartTls.OFF else None
    if mode is not None:
        where = f"{source}" if source is not None else f"{context.server_source}"
        if not certificates:
            raise ConfigError(f'no "ssl_certificate" is defined for the "{mode}" directive in {where}')
        if not keys:
            raise ConfigError(f'no "ssl_certificate_key" is defined for the "{mode}" directive in {where}')
        if len(keys) < len(certificates):
            raise ConfigError(
                'no "ssl_certificate_key" is defined for certificate '
                f'"{_shown_certificate(certificates[-1])}" and the "{mode}" directive in {where}'
            )
        if compression and not certificate_compression_available():
            compression_source = server.certificate_compression_source or mail.certificate_compression_source
            raise ConfigError(
                f'"ssl_certificate_compression" is not supported by {_openssl.OPENSSL_VERSION}, '
                "it needs OpenSSL 3.2 or newer",
                compression_source,
            )
        if verify in (VerifyClient.ON, VerifyClient.OPTIONAL) and not (
            client_certificate or trusted_certificate
        ):
            raise ConfigError("no ssl_client_certificate or ssl_trusted_certificate for ssl_verify_client")
        for name in ticket_keys:
            check_ticket_key_file(context.conf_path(name), context.mail_end_source)

    def optional_path(value: str) -> Path | None:
        return Path(context.conf_path(value)) if value else None

    return SslSettings(
        starttls=starttls,
        certificates=tuple(
            CertificatePair(
                pem_source(certificate, context.conf_path(certificate), key=False),
                pem_source(key, context.conf_path(key), key=True),
            )
            for certificate, key in zip(certificates, keys, strict=False)
        ),
        passwords=tuple(passwords) if passwords is not None else None,
        password_file=Path(password_file) if password_file is not None else None,
        certificate_compression=compression,
        dhparam=optional_path(inherit(server.dhparam, mail.dhparam, "")),
        ecdh_curve=inherit(server.ecdh_curve, mail.ecdh_curve, "auto"),
        protocols=frozenset(server.protocols or mail.protocols or _DEFAULT_PROTOCOLS),
        ciphers=inherit(server.ciphers, mail.ciphers, _DEFAULT_CIPHERS),
        prefer_server_ciphers=inherit(server.prefer_server_ciphers, mail.prefer_server_ciphers, False),
        session_cache=_session_cache_settings(builtin, shared),
        session_tickets=inherit(server.session_tickets, mail.session_tickets, True),
        session_ticket_keys=tuple(Path(context.conf_path(name)) for name in ticket_keys),
        session_timeout=inherit(server.session_timeout, mail.session_timeout, 300.0),
        verify_client=verify,
        verify_depth=inherit(server.verify_depth, mail.verify_depth, 1),
        client_certificate=optional_path(client_certificate),
        trusted_certificate=optional_path(trusted_certificate),
        crl=optional_path(inherit(server.crl, mail.crl, "")),
        conf_commands=inherit_list(server.conf_commands, mail.conf_commands),
        starttls_source=source,
    )


def check_ticket_key_file(name: str, source: SourceRef | None) -> None:
    """ngx_ssl_session_ticket_keys' file check: exactly 48 or 80 bytes."""
    try:
        descriptor = os.open(c_string(name), os.O_RDONLY)
    except OSError as error:
        raise ConfigError(
            f'open() "{shown(name)}" failed ({error.errno}: {error.strerror})', source
        ) from None
    try:
        size = os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)
    if size not in (48, 80):
        raise conf_error(f'"{shown(name)}" must be 48 or 80 bytes', source)
