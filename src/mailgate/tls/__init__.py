"""TLS: an SSLContext per server from its configuration, plus the libssl calls Python's ssl lacks.

tls = build_server_context(server)          # at configuration time (and for `-t`); ConfigError on failure
await peer.start_tls(tls.ssl_ctx, ...)      # mailgate._io; handshake_failure(error) is nginx's line
check = check_client_certificate(peer.ssl, server)
facts = tls_facts(peer.ssl, server)
"""

from mailgate.tls.connection import CertCheck, CertStatus, check_client_certificate, tls_facts
from mailgate.tls.context import ServerTls, build_server_context
from mailgate.tls.facts import ClientCertificate, TlsFacts
from mailgate.tls.failures import TlsError, TlsLogLine, handshake_failure
from mailgate.tls.sslobject import SHUTDOWN_TIMEOUT

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "CertCheck",
    "CertStatus",
    "ClientCertificate",
    "ServerTls",
    "TlsError",
    "TlsFacts",
    "TlsLogLine",
    "build_server_context",
    "check_client_certificate",
    "handshake_failure",
    "tls_facts",
]
