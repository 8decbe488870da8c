"""How client TLS connections end, as nginx's do (TLS itself runs in `mailgate._io`, on the socket).

A failed handshake or read sends OpenSSL's fatal alert, then closes the connection at once, and is described
from OpenSSL's error queue as nginx describes it (`failures.tls_failure`). A client that timed out gets no
close_notify (`Peer.quiet_shutdown`); after its own close_notify, a connection waits `SHUTDOWN_TIMEOUT` for
the client's. An SSL is marked as shut down when it is freed, as nginx's ngx_ssl_shutdown always does, so
that its session stays resumable however the connection ended.
"""

from __future__ import annotations

# How long nginx waits for the client's close_notify after sending its own (ngx_ssl_shutdown's timer).
SHUTDOWN_TIMEOUT = 3.0
