"""Test helpers: certificates, server configurations, a uvloop TLS server on port 0, and real clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import queue
import re
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trustme
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailgate.config import model
from mailgate.proxy.relay import Peer, reactor_of
from mailgate.tls import (
    SHUTDOWN_TIMEOUT,
    CertCheck,
    ServerTls,
    TlsFacts,
    TlsLogLine,
    check_client_certificate,
    handshake_failure,
    tls_facts,
)

# ---------------------------------------------------------------------------------------------------------
# Certificates


def _write(path: Path, *blobs: bytes) -> Path:
    path.write_bytes(b"".join(blobs))
    return path


def _leaf_files(directory: Path, name: str, leaf: trustme.LeafCert, *chain_extra: bytes) -> tuple[Path, Path]:
    cert = _write(directory / f"{name}.crt", *(blob.bytes() for blob in leaf.cert_chain_pems), *chain_extra)
    key = _write(directory / f"{name}.key", leaf.private_key_pem.bytes())
    return cert, key


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert = _write(directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM))
    key_path = _write(
        directory / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return cert, key_path


def _crl(ca: trustme.CA, revoked_serials: list[int]) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(days=1))
        .next_update(now + datetime.timedelta(days=30))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


def _serial(cert_path: Path) -> int:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


@dataclass
class Pki:
    """Everything the TLS tests need, as files."""

    directory: Path
    ca_file: Path  # the CA that issued the server and good client certificates
    other_ca_file: Path  # an unrelated CA
    server_rsa: tuple[Path, Path]
    server_ecdsa: tuple[Path, Path]
    client: tuple[Path, Path]
    client_expired: tuple[Path, Path]
    client_revoked: tuple[Path, Path]
    client_deep: tuple[Path, Path]  # two intermediate CAs below ca, carried in the file
    client_untrusted: tuple[Path, Path]  # issued by other_ca
    client_self_signed: tuple[Path, Path]
    crl_file: Path  # revokes client_revoked (issued by ca)
    crl_with_intermediates: Path  # ca's CRL plus empty CRLs of both intermediates


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA(organization_name="Mailgate Test CA")
    other = trustme.CA(organization_name="Somebody Else")
    intermediate = ca.create_child_ca()
    second_intermediate = intermediate.create_child_ca()
    now = datetime.datetime.now(datetime.UTC)
    server_rsa = ca.issue_cert("localhost", common_name="mail.test", key_type=trustme.KeyType.RSA)
    server_ecdsa = ca.issue_cert("localhost", common_name="mail.test", key_type=trustme.KeyType.ECDSA)
    client = ca.issue_cert("alice@example.com", common_name="alice", organization_name="Example, Inc.")
    expired = ca.issue_cert(
        "bob@example.com",
        common_name="bob",
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    revoked = ca.issue_cert("carol@example.com", common_name="carol")
    deep = second_intermediate.issue_cert("dave@example.com", common_name="dave")
    untrusted = other.issue_cert("eve@example.com", common_name="eve")
    pki = Pki(
        directory=directory,
        ca_file=_write(directory / "ca.crt", ca.cert_pem.bytes()),
        other_ca_file=_write(directory / "other-ca.crt", other.cert_pem.bytes()),
        server_rsa=_leaf_files(directory, "server-rsa", server_rsa),
        server_ecdsa=_leaf_files(directory, "server-ecdsa", server_ecdsa),
        client=_leaf_files(directory, "client", client),
        client_expired=_leaf_files(directory, "client-expired", expired),
        client_revoked=_leaf_files(directory, "client-revoked", revoked),
        client_deep=_leaf_files(directory, "client-deep", deep),
        client_untrusted=_leaf_files(directory, "client-untrusted", untrusted),
        client_self_signed=_self_signed(directory, "client-self-signed"),
        crl_file=directory / "ca.crl",
        crl_with_intermediates=directory / "chain.crl",
    )
    crl = _crl(ca, [_serial(pki.client_revoked[0])])
    _write(pki.crl_file, crl)
    _write(pki.crl_with_intermediates, crl, _crl(intermediate, []), _crl(second_intermediate, []))
    return pki


# ---------------------------------------------------------------------------------------------------------
# Configuration objects (the loader is not needed to exercise the TLS engine)


def pem_file(path: Path) -> model.PemSource:
    return model.PemSource(kind="file", path=path, text=str(path))


def pair(cert: Path, key: Path) -> model.CertificatePair:
    return model.CertificatePair(pem_file(cert), pem_file(key))


def server_config(
    certificates: tuple[model.CertificatePair, ...],
    protocol: model.Protocol = model.Protocol.IMAP,
    **ssl_settings: Any,
) -> model.ServerConfig:
    url = model.AuthHttpUrl(socket.AF_INET, "127.0.0.1", 9, "/auth", "localhost", "127.0.0.1:9")
    listen = model.Listen(
        socket.AF_INET,
        "127.0.0.1",
        993,
        "127.0.0.1:993",
        wildcard=False,
        ssl=True,
        source=model.SourceRef("/etc/mailgate/mail.conf", 7),
    )
    return model.ServerConfig(
        source=model.SourceRef("/etc/mailgate/mail.conf", 5),
        protocol=protocol,
        listens=(listen,),
        core=model.CoreSettings(server_name="mail.test"),
        auth_http=model.AuthHttpSettings(url=url),
        proxy=model.ProxySettings(),
        realip=model.RealIpSettings(),
        ssl=model.SslSettings(certificates=certificates, **ssl_settings),
        imap=model.ImapSettings(),
        pop3=model.Pop3Settings(),
        smtp=model.SmtpSettings(),
    )


def with_ssl(server: model.ServerConfig, **ssl_settings: Any) -> model.ServerConfig:
    return replace(server, ssl=replace(server.ssl, **ssl_settings))


# ---------------------------------------------------------------------------------------------------------
# A TLS server on the event loop mailgate uses


@dataclass
class Accepted:
    """What the server saw on one connection after its handshake."""

    check: CertCheck
    facts: TlsFacts


@dataclass
class TlsServer:
    """Accepts as mailgate's sessions do: the socket goes to a `Peer`, which runs the TLS handshake."""

    tls: ServerTls
    port: int = 0
    accepted: queue.Queue[Accepted] = field(default_factory=queue.Queue)
    failures: queue.Queue[TlsLogLine | None] = field(default_factory=queue.Queue)  # None: timed out
    errors: queue.Queue[BaseException] = field(default_factory=queue.Queue)
    closed: queue.Queue[None] = field(default_factory=queue.Queue)  # one entry per connection that ended
    handshake_timeout: float = 10.0
    waits_for_the_client: bool = False  # greet, then let the client end the connection

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        connections: set[asyncio.Task[None]] = set()
        while True:
            sock, _address = await loop.sock_accept(listener)
            task = loop.create_task(self._handle(sock))
            connections.add(task)
            task.add_done_callback(connections.discard)

    async def _handle(self, sock: socket.socket) -> None:
        try:
            await self._session(sock)
        finally:
            self.closed.put(None)

    async def _session(self, sock: socket.socket) -> None:
        peer = Peer(reactor_of(asyncio.get_running_loop()), sock.detach())
        try:
            done = await peer.start_tls(self.tls.ssl_ctx, self.handshake_timeout, SHUTDOWN_TIMEOUT)
        except (ssl.SSLError, OSError) as error:
            self.failures.put(handshake_failure(error))
            return
        if not done:
            self.errors.put(ConnectionResetError("closed in the handshake"))
            return
        try:
            check = check_client_certificate(peer.ssl, self.tls.server)
            facts = tls_facts(peer.ssl, self.tls.server)
            self.accepted.put(Accepted(check, facts))
            peer.write(check.reply(self.tls.server.protocol) or b"* OK ready\r\n")
            if not self.waits_for_the_client:
                peer.close()
            while await peer.read():  # until the connection is gone
                pass
        except Exception as error:
            self.errors.put(error)
            peer.abort()

    def next_accepted(self) -> Accepted:
        return self.accepted.get(timeout=10)

    def next_failure(self) -> TlsLogLine | None:
        """nginx's line for the next handshake that failed (None for one that timed out)."""
        return self.failures.get(timeout=10)

    def wait_closed(self) -> None:
        """Until the server is done with its next connection."""
        self.closed.get(timeout=10)


@contextlib.contextmanager
def serving(
    tls: ServerTls,
    sock: socket.socket | None = None,
    *,
    handshake_timeout: float = 10.0,
    waits_for_the_client: bool = False,
) -> Iterator[TlsServer]:
    """Run a uvloop TLS server with `tls.context` in a thread, on 127.0.0.1 and a free port.

    It greets each client over TLS (`* OK ready` or the certificate check's refusal) and closes, or with
    `waits_for_the_client` leaves the end to the client.
    """
    server = TlsServer(tls, handshake_timeout=handshake_timeout, waits_for_the_client=waits_for_the_client)
    listener = sock or socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    server.port = listener.getsockname()[1]
    loop = uvloop.new_event_loop()
    started = threading.Event()
    handle: dict[str, Any] = {}

    async def main() -> None:
        handle["task"] = asyncio.current_task()
        started.set()
        await server._serve(listener)

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(handle["task"].cancel)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        listener.close()
    if not server.errors.empty():
        raise server.errors.get()


# ---------------------------------------------------------------------------------------------------------
# Clients nobody here wrote


@dataclass
class SClient:
    returncode: int
    output: str

    @property
    def handshake_done(self) -> bool:
        return "Cipher is" in self.output and "Cipher is (NONE)" not in self.output

    @property
    def reused(self) -> bool:
        return "\nReused, " in self.output

    @property
    def protocol(self) -> str | None:
        match = re.search(r"^\s*Protocol\s*: (\S+)", self.output, re.MULTILINE)
        return match.group(1) if match else None

    @property
    def cipher(self) -> str | None:
        match = re.search(r"Cipher is (\S+)", self.output)
        return match.group(1) if match else None

    @property
    def server_key(self) -> str | None:
        match = re.search(r"Server public key is (\d+) bit", self.output)
        return match.group(1) if match else None

    @property
    def ca_names(self) -> list[str]:
        match = re.search(
            r"Acceptable client certificate CA names\n((?:[^\n]+\n)*?)(?:Requested|Client|Shared)",
            self.output,
        )
        return match.group(1).splitlines() if match else []


def s_client(port: int, *arguments: str | Path) -> SClient:
    """`openssl s_client` to the server; reads until the server closes (the greeting, then close)."""
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *map(str, arguments)]
    result = subprocess.run(command, input=b"", capture_output=True, timeout=30, check=False)
    return SClient(result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace"))


def python_client_context(**kwargs: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for name, value in kwargs.items():
        setattr(context, name, value)
    return context


def python_connect(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """Handshake with Python's ssl, read the greeting; (greeting, session to resume, was it resumed)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, session=session) as tls,
    ):
        greeting = tls.recv(1024)
        with contextlib.suppress(OSError, ssl.SSLError):
            while tls.recv(1024):
                pass
        return greeting, tls.session, bool(tls.session_reused)


def resumes(port: int, version: str, session_file: Path, *extra: str | Path) -> bool:
    """Does a second `openssl s_client` resume the session the first one saved? (`-tls1_2`/`-tls1_3`)"""
    session_file.unlink(missing_ok=True)
    first = s_client(port, version, "-sess_out", session_file, *extra)
    assert first.handshake_done, first.output
    if not session_file.exists():
        return False
    second = s_client(port, version, "-sess_in", session_file, *extra)
    assert second.handshake_done, second.output
    return second.reused


def unique_zone(size: int = 1 << 20) -> model.SharedCacheZone:
    return model.SharedCacheZone(name=f"zone{uuid.uuid4().hex[:12]}", size=size)
