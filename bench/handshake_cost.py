"""Server-side CPU of one TLS handshake on mailgate's real SSL context, in memory, with and without its Python
ticket-key callback, so its cost is measured apart from sockets, the event loop and machine noise.

Run with the project's venv after one `bench/run` (which writes the configuration and certificates):

    .venv/bin/python bench/handshake_cost.py [--conf bench/results/mailgate/mailgate.conf] [-n 600]
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import statistics
import time
from pathlib import Path

from mailgate.config import load
from mailgate.tls import ServerTls, build_server_context
from mailgate.tls.libssl import SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, libssl, ssl_ctx_of

CONF = Path(__file__).resolve().parent / "results/mailgate/mailgate.conf"
VARIANTS = ("as configured", "no ticket-key callback")
MODES = ("full TLS 1.3", "resumed TLS 1.3", "resumed TLS 1.2")
BATCH = 25  # handshakes per turn; a variant's cost is the median of its batches' means


def server_context(conf: Path, variant: str) -> ServerTls:
    """The first server's context (the bench's ECDSA IMAPS listener), with callbacks removed per `variant`."""
    config = load(conf, conf.parent).config
    assert config.mail is not None
    tls = build_server_context(config.mail.servers[0], prefix=conf.parent)
    ctx = ssl_ctx_of(tls.context)
    if variant == "no ticket-key callback":
        libssl.SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, None)
    return tls


class Handshakes:
    """Client and server SSLObjects over memory BIOs; only the server's do_handshake() calls are timed."""

    def __init__(self, server: ssl.SSLContext, mode: str) -> None:
        self.server = server
        self.mode = mode
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client.check_hostname = False
        self.client.verify_mode = ssl.CERT_NONE
        if mode.endswith("1.2"):
            self.client.maximum_version = ssl.TLSVersion.TLSv1_2
        self.session: ssl.SSLSession | None = None

    def one(self) -> float:
        """Server CPU seconds of one handshake."""
        to_server, from_server, to_client, from_client = (ssl.MemoryBIO() for _ in range(4))
        server = self.server.wrap_bio(to_server, from_server, server_side=True)
        offered = self.session if self.mode.startswith("resumed") else None
        client = self.client.wrap_bio(to_client, from_client, session=offered)
        spent = 0.0
        for _ in range(4):
            with contextlib.suppress(ssl.SSLWantReadError):
                client.do_handshake()
            to_server.write(from_client.read())
            started = time.process_time()
            with contextlib.suppress(ssl.SSLWantReadError):
                server.do_handshake()
            spent += time.process_time() - started
            to_client.write(from_server.read())
        with contextlib.suppress(ssl.SSLWantReadError):
            client.read(1)  # takes in the TLS 1.3 session tickets
        self.session = client.session
        return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", type=Path, default=CONF)
    parser.add_argument("-n", type=int, default=1000, help="handshakes per variant and mode")
    args = parser.parse_args()
    print(f"{'server CPU per handshake, ms':30s}" + "".join(f"{variant:>24s}" for variant in VARIANTS))
    for mode in MODES:
        runners = [Handshakes(server_context(args.conf, variant).context, mode) for variant in VARIANTS]
        batches: list[list[float]] = [[] for _ in VARIANTS]
        for runner in runners:
            runner.one()  # a session to resume, and warm caches
        for _ in range(max(1, args.n // BATCH)):  # variants take turns, so machine noise hits all alike
            for runner, found in zip(runners, batches, strict=True):
                found.append(1000.0 * sum(runner.one() for _ in range(BATCH)) / BATCH)
        print(f"{mode:30s}" + "".join(f"{statistics.median(found):24.3f}" for found in batches))


if __name__ == "__main__":
    main()
