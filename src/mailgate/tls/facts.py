"""What a finished TLS handshake tells the rest of a session (auth headers, PROXY v2 TLVs, logs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientCertificate:
    """The client's certificate as nginx reports it in `Auth-SSL-*` headers."""

    subject: str  # RFC 2253 form, as OpenSSL's X509_NAME_print_ex(XN_FLAG_RFC2253)
    issuer: str
    serial: str  # uppercase hex
    fingerprint: str  # SHA-1 of the DER, 40 lowercase hex digits
    pem: bytes  # PEM text, for `Auth-SSL-Cert` (escaped by the auth request builder)
    common_name: str | None = None  # for the PROXY v2 SSL CN sub-TLV
    presented_on_this_connection: bool = True  # False when the session was resumed


@dataclass(frozen=True)
class TlsFacts:
    """One TLS connection after its handshake."""

    protocol: str  # `TLSv1.2`, `TLSv1.3` (SSL_get_version)
    cipher: str  # OpenSSL cipher name (SSL_CIPHER_get_name)
    resumed: bool = False
    verify: str | None = None  # None when ssl_verify_client is off; else `SUCCESS`, `NONE`, `FAILED:reason`
    verify_code: int = 0  # X509 verify result (0 = OK); 1 in PROXY v2 when no certificate was sent
    certificate: ClientCertificate | None = None
    server_name: str | None = None  # SNI sent by the client
    alpn: str | None = None  # selected ALPN protocol
    server_signature_algorithm: str | None = None  # short name of our certificate's signature algorithm
    server_key_algorithm: str | None = None  # `RSA2048`, `EC256`, ...
