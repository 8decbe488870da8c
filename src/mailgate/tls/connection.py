"""What one finished handshake tells: nginx's post-handshake client-certificate decision and the facts for
the auth request and PROXY v2 TLVs."""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from mailgate._io import tls_summary
from mailgate.config.model import Protocol, ServerConfig, VerifyClient
from mailgate.protocol.lines import CERT_ERROR, NO_CERT
from mailgate.tls.callbacks import session_id, state_of
from mailgate.tls.facts import ClientCertificate, TlsFacts
from mailgate.tls.libssl import (
    X509_V_OK,
    XN_FLAG_RFC2253,
    bio_contents,
    crypto,
    libssl,
    verify_error_string,
)

# X509 verify results `optional_no_ca` tolerates: self-signed leaf or chain, unknown issuer, untrusted.
_OPTIONAL_NO_CA_TOLERATED = frozenset({18, 19, 20, 21, 27})


class CertStatus(Enum):
    OK = "ok"
    CERT_ERROR = "cert error"
    NO_CERT = "no cert"


@dataclass(frozen=True)
class CertCheck:
    """The post-handshake decision on the client certificate (spec §4.3)."""

    status: CertStatus
    code: int = X509_V_OK  # X509 verify result
    reason: str = ""  # X509_verify_cert_error_string(code) for CERT_ERROR

    @property
    def ok(self) -> bool:
        return self.status is CertStatus.OK

    @property
    def log_message(self) -> str | None:
        """The info-level log line nginx writes on rejection; None when the session goes on."""
        if self.status is CertStatus.CERT_ERROR:
            return f"client SSL certificate verify error: ({self.code}:{self.reason})"
        if self.status is CertStatus.NO_CERT:
            return "client sent no required SSL certificate"
        return None

    def reply(self, protocol: Protocol) -> bytes | None:
        """The line sent over TLS before closing on rejection; None when the session goes on."""
        if self.status is CertStatus.CERT_ERROR:
            return CERT_ERROR[protocol]
        if self.status is CertStatus.NO_CERT:
            return NO_CERT[protocol]
        return None


def _has_peer_certificate(ssl: int) -> bool:
    certificate = libssl.SSL_get1_peer_certificate(ssl)
    if not certificate:
        return False
    crypto.X509_free(certificate)
    return True


def check_client_certificate(ssl: int, server: ServerConfig) -> CertCheck:
    """nginx's decision after the handshake on the connection's `SSL*`; on rejection the session is also
    removed from the caches."""
    mode = server.ssl.verify_client
    if mode is VerifyClient.OFF:
        return CertCheck(CertStatus.OK)
    code = libssl.SSL_get_verify_result(ssl)
    if code != X509_V_OK and not (mode is VerifyClient.OPTIONAL_NO_CA and code in _OPTIONAL_NO_CA_TOLERATED):
        _forget_session(ssl)
        return CertCheck(CertStatus.CERT_ERROR, code, verify_error_string(code))
    if mode is VerifyClient.ON and not _has_peer_certificate(ssl):
        _forget_session(ssl)
        return CertCheck(CertStatus.NO_CERT)
    return CertCheck(CertStatus.OK, code)


def _forget_session(ssl: int) -> None:
    """SSL_CTX_remove_session (which also reaches the shared cache), then the shared cache directly."""
    session = libssl.SSL_get_session(ssl)
    if not session:
        return
    ssl_ctx = libssl.SSL_get_SSL_CTX(ssl)
    libssl.SSL_CTX_remove_session(ssl_ctx, session)
    state = state_of(ssl_ctx)
    if state is not None and state.shared_cache is not None:
        state.shared_cache.remove(session_id(session))


def tls_facts(ssl: int, server: ServerConfig) -> TlsFacts:
    """Protocol, cipher, verify result and client certificate of a connection's `SSL*`, in exactly nginx's
    formats."""
    version, cipher, resumed, code, has_certificate, server_name, alpn, signature, key = tls_summary(ssl)
    certificate = _client_certificate(ssl, resumed) if has_certificate else None
    if certificate is None:
        code = 1
    verify: str | None = None
    if server.ssl.verify_client is not VerifyClient.OFF:
        if certificate is None:
            verify = "NONE"
        elif code == X509_V_OK:
            verify = "SUCCESS"
        else:
            verify = f"FAILED:{verify_error_string(code)}"
    return TlsFacts(
        protocol=version,
        cipher=cipher,
        resumed=resumed,
        verify=verify,
        verify_code=code,
        certificate=certificate,
        server_name=server_name.decode("utf-8", "replace") if server_name else None,
        alpn=alpn.decode("ascii", "replace") if alpn else None,
        server_signature_algorithm=signature,
        server_key_algorithm=key,
    )


def _name_text(name: int) -> str:
    bio = crypto.BIO_new(crypto.BIO_s_mem())
    try:
        crypto.X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253)
        return bio_contents(bio).decode("utf-8", "replace")
    finally:
        crypto.BIO_free(bio)


def _client_certificate(ssl: int, resumed: bool) -> ClientCertificate | None:
    certificate = libssl.SSL_get1_peer_certificate(ssl)
    if not certificate:
        return None
    bio = crypto.BIO_new(crypto.BIO_s_mem())
    try:
        crypto.i2a_ASN1_INTEGER(bio, crypto.X509_get_serialNumber(certificate))
        serial = bio_contents(bio).decode("ascii", "replace")
        crypto.PEM_write_bio_X509(bio, certificate)
        pem = bio_contents(bio)
        cursor = ctypes.c_void_p()
        length = crypto.i2d_X509(certificate, None)
        buffer = ctypes.create_string_buffer(length)
        cursor.value = ctypes.addressof(buffer)
        crypto.i2d_X509(certificate, ctypes.byref(cursor))
        der = buffer.raw
        subject = _name_text(crypto.X509_get_subject_name(certificate))
        issuer = _name_text(crypto.X509_get_issuer_name(certificate))
    finally:
        crypto.BIO_free(bio)
        crypto.X509_free(certificate)
    return ClientCertificate(
        subject=subject,
        issuer=issuer,
        serial=serial,
        fingerprint=hashlib.sha1(der).hexdigest(),
        pem=pem,
        common_name=_common_name(der),
        presented_on_this_connection=not resumed,
    )


def _common_name(der: bytes) -> str | None:
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
