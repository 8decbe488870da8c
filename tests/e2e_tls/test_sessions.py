"""TLS session resumption through mail sessions: `openssl s_client -sess_out` then `-sess_in`, per
ssl_session_cache × ssl_session_tickets for TLS 1.2 and 1.3, as nginx; the client certificate a resumed
session carries; the ticket lifetime (ssl_session_timeout); and `ssl_session_ticket_key` shared by two
mailgate instances. The handshake-level matrix is in tests/tls/test_sessions.py; here a resumed session must
also serve its mail session.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_tls.support import (
    KINDS,
    READ_TIMEOUT,
    SERVER_NAME,
    Proxy,
    SClientRun,
    client_context,
    mail_config,
    running,
    running_both,
    s_client,
)
from tests.process.conftest import wait_for_log, workers
from tests.support.loopback import IPV4_LOOPBACK
from tests.tls.support import Pki

TEMPLATE = mail_config(
    """
    ssl_client_certificate $pki/ca.crt;
    auth_http_pass_client_cert on;

    server { listen 127.0.0.1:$imap_none_tickets ssl; protocol imap; }
    server {
        listen 127.0.0.1:$imap_none ssl; protocol imap;
        ssl_session_cache none; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$imap_off ssl; protocol imap;
        ssl_session_cache off; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$imap_builtin ssl; protocol imap;
        ssl_session_cache builtin:1000; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$imap_shared ssl; protocol imap;
        ssl_session_cache shared:E2E_SHARED:1m; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$imap_shared_tickets ssl; protocol imap;
        ssl_session_cache shared:E2E_TICKETS:1m; ssl_session_timeout 10m;
    }
    server {
        listen 127.0.0.1:$imap_builtin_quick ssl; protocol imap; timeout 2s;
        ssl_session_cache builtin:1000; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$imap_shared_quick ssl; protocol imap; timeout 2s;
        ssl_session_cache shared:E2E_QUICK:1m; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$smtp_shared; protocol smtp; starttls on;
        ssl_session_cache shared:E2E_SMTP:1m; ssl_session_tickets off;
    }
    server {
        listen 127.0.0.1:$imap_verify ssl; protocol imap;
        ssl_verify_client optional; ssl_crl $pki/ca.crl;
        ssl_session_cache shared:E2E_VERIFY:1m;
    }
    server {
        listen 127.0.0.1:$imap_verify_ids ssl; protocol imap;
        ssl_verify_client on; ssl_crl $pki/ca.crl;
        ssl_session_cache shared:E2E_VERIFY_IDS:1m; ssl_session_tickets off;
    }
"""
)

pytestmark = pytest.mark.nginx


@pytest.fixture(scope="module")
def proxies(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    with running_both(TEMPLATE, pki.directory, tmp_path_factory.mktemp("sessions")) as both:
        yield both


IMAP_TYPED = b"a CAPABILITY\na LOGIN alice secret\n"


def imap_session(port: int, *arguments: str | Path) -> SClientRun:
    """An implicit-TLS IMAP session with s_client: CAPABILITY, then a login (refused: the session ends)."""
    run = s_client(port, *arguments, typed=IMAP_TYPED, after="* OK IMAP4 ready")
    assert run.handshake_done, run.output
    assert run.has_line("a OK completed"), run.output
    return run


def resumes(port: int, version: str, session_file: Path) -> bool:
    """Does a second session resume the TLS session the first one saved?"""
    first = imap_session(port, version, "-sess_out", session_file)
    assert not first.reused
    if not session_file.exists():
        return False  # nothing to resume: no session id and no ticket (TLS 1.2, ssl_session_cache off)
    return imap_session(port, version, "-sess_in", session_file).reused


# (server, resumes with TLS 1.2, resumes with TLS 1.3): resumption iff tickets are on or a cache stores.
MATRIX = [
    ("imap_none_tickets", True, True),
    ("imap_none", False, False),
    ("imap_off", False, False),
    ("imap_builtin", True, True),
    ("imap_shared", True, True),
    ("imap_shared_tickets", True, True),
]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("case", MATRIX, ids=[case[0] for case in MATRIX])
def test_resumption_per_cache_and_tickets_through_an_imap_session(
    proxies: dict[str, Proxy], tmp_path: Path, case: tuple[str, bool, bool], version: str
) -> None:
    server, tls12, tls13 = case
    seen = {kind: resumes(proxies[kind].port(server), version, tmp_path / f"{kind}.pem") for kind in KINDS}
    assert seen["mailgate"] == seen["nginx"]
    assert seen["mailgate"] is (tls12 if version == "-tls1_2" else tls13)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_starttls_session_resumes_from_the_shared_cache(
    proxies: dict[str, Proxy], tmp_path: Path, version: str
) -> None:
    typed = b"EHLO client.example.org\nQUIT\n"
    port = proxies["mailgate"].port("smtp_shared")
    session = tmp_path / "smtp.pem"
    common = ("-starttls", "smtp", version)
    first = s_client(port, *common, "-sess_out", session, typed=typed)
    second = s_client(port, *common, "-sess_in", session, typed=typed)
    assert first.has_line("221 2.0.0 Bye") and not first.reused, first.output
    assert second.has_line("221 2.0.0 Bye") and second.reused, second.output


RELOADED = "worker_processes 2;\n" + mail_config(
    """
    server {
        listen 127.0.0.1:$imap ssl; protocol imap;
        ssl_session_cache shared:E2E_RELOADED:1m; ssl_session_tickets off;
    }
"""
)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_shared_cache_sessions_outlive_a_reload(pki: Pki, tmp_path: Path, version: str) -> None:
    """As nginx keeps a shared zone whose name and size stay: the master made it before forking, the workers
    (running as nobody) write it, and the next generation's workers find what the last one stored."""
    directory = Path(tempfile.mkdtemp(prefix="mailgate-reload-"))
    directory.chmod(0o755)  # the workers run as nobody
    try:
        with running("mailgate", RELOADED, pki.directory, directory, master_process=True) as proxy:
            port = proxy.port("imap")
            session = tmp_path / "session.pem"
            assert not imap_session(port, version, "-sess_out", session).reused
            master = int((directory / "mailgate.pid").read_text())
            old_workers = workers(master, 2)
            os.kill(master, signal.SIGHUP)
            wait_for_log(proxy.error_log, r"exited with code 0$", count=len(old_workers))
            assert set(workers(master, 2)).isdisjoint(old_workers)
            assert imap_session(port, version, "-sess_in", session).reused
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def verify_headers(proxy: Proxy, since: int) -> list[dict[str, str]]:
    return [
        {name: value for name, value in request.headers if name.startswith("Auth-SSL-")}
        for request in proxy.new_requests(since)
    ]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_resumed_session_reports_the_certificate_of_the_original_handshake(
    proxies: dict[str, Proxy], pki: Pki, tmp_path: Path, version: str
) -> None:
    seen = {}
    for kind in KINDS:
        proxy = proxies[kind]
        before = len(proxy.auth.requests)
        session = tmp_path / f"{kind}.pem"
        certificate = ("-cert", pki.client[0], "-key", pki.client[1])
        first = imap_session(proxy.port("imap_verify"), version, "-sess_out", session, *certificate)
        second = imap_session(proxy.port("imap_verify"), version, "-sess_in", session)
        assert (first.reused, second.reused) == (False, True)
        seen[kind] = verify_headers(proxy, before)
    original, resumed = seen["mailgate"]
    assert seen["mailgate"] == seen["nginx"]
    assert resumed == original
    assert resumed["Auth-SSL-Verify"] == "SUCCESS"
    assert resumed["Auth-SSL-Subject"].startswith("CN=alice,")


def test_session_of_a_rejected_certificate_is_not_resumed(
    proxies: dict[str, Proxy], pki: Pki, tmp_path: Path
) -> None:
    """A session ended for its certificate leaves the cache: the next one is a full handshake, and without
    a certificate it is refused as such."""
    for kind in KINDS:
        port = proxies[kind].port("imap_verify_ids")
        session = tmp_path / f"{kind}.pem"
        revoked = ("-cert", pki.client_revoked[0], "-key", pki.client_revoked[1])
        first = s_client(port, "-brief", "-tls1_2", "-sess_out", session, *revoked, typed=IMAP_TYPED)
        second = s_client(port, "-tls1_2", "-sess_in", session, typed=IMAP_TYPED)
        assert first.lines == ["* BYE SSL certificate error"], f"{kind}: {first.output}"
        assert not second.reused, f"{kind}: {second.output}"
        assert second.has_line("* BYE No required SSL certificate"), f"{kind}: {second.output}"


def ticket_lifetime_hint(run: SClientRun) -> int | None:
    match = re.search(r"TLS session ticket lifetime hint: (\d+) \(seconds\)", run.output)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize(("server", "lifetime"), [("imap_none_tickets", 300), ("imap_shared_tickets", 600)])
def test_session_timeout_is_the_ticket_lifetime_clients_are_told(
    proxies: dict[str, Proxy], server: str, lifetime: int
) -> None:
    for kind in KINDS:
        run = imap_session(proxies[kind].port(server), "-tls1_2")
        assert ticket_lifetime_hint(run) == lifetime, f"{kind}: {run.output}"


# --- ssl_session_ticket_key shared by two mailgate instances ---------------------------------------------

TICKET_KEY_TEMPLATE = mail_config(
    """
    server {
        listen 127.0.0.1:$imap ssl; protocol imap;
        $ticket_keys
    }
"""
)


@pytest.fixture(scope="module")
def ticket_instances(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    """Four mailgate instances: two on the same key file, one with a new key listed before it, one without."""
    directory = tmp_path_factory.mktemp("ticket-keys")
    current, previous = directory / "current.key", directory / "previous.key"
    current.write_bytes(os.urandom(80))
    previous.write_bytes(os.urandom(48))
    keys = {
        "issuer": [previous],
        "same_key": [previous],
        "rotated": [current, previous],
        "other_key": [current],
    }
    with contextlib.ExitStack() as stack:
        instances = {}
        for name, files in keys.items():
            ticket_keys = " ".join(f"ssl_session_ticket_key {path};" for path in files)
            instances[name] = stack.enter_context(
                running(
                    "mailgate",
                    TICKET_KEY_TEMPLATE,
                    pki.directory,
                    directory / name,
                    values={"ticket_keys": ticket_keys},
                )
            )
        yield instances


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_ticket_from_one_instance_resumes_on_another_with_the_same_key_file(
    ticket_instances: dict[str, Proxy], tmp_path: Path, version: str
) -> None:
    session = tmp_path / "session.pem"

    def port(name: str) -> int:
        return ticket_instances[name].port("imap")

    issued = imap_session(port("issuer"), version, "-sess_out", session)
    on_same_key = imap_session(port("same_key"), version, "-sess_in", session)
    after_rotation = imap_session(port("rotated"), version, "-sess_in", session)
    without_the_key = imap_session(port("other_key"), version, "-sess_in", session)
    assert not issued.reused
    assert on_same_key.reused, on_same_key.output
    # The old key still decrypts once a new one is listed first.
    assert after_rotation.reused, after_rotation.output
    assert not without_the_key.reused, without_the_key.output


# --- a session stays resumable however its connection ended ----------------------------------------------


def end_connection(tls: ssl.SSLSocket, ending: str) -> None:
    """End an IMAP session over Python's ssl, which never sends close_notify on close()."""
    if ending == "reset":
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif ending == "logout":
        tls.sendall(b"a LOGOUT\r\n")
    elif ending == "refused login":
        tls.sendall(b"a LOGIN alice secret\r\n")
    if ending in ("logout", "refused login", "timeout"):  # the server ends it: read until it has
        with contextlib.suppress(ssl.SSLError, OSError):
            while tls.recv(4096):
                pass
    tls.close()
    # Let the server finish the connection before the next one (a connection still open keeps its session
    # resumable anyway: a slow server can only make this test pass, never fail).
    time.sleep(0.3)


def python_session(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSocket, bool]:
    raw = socket.create_connection((IPV4_LOOPBACK, port), timeout=READ_TIMEOUT)
    tls = context.wrap_socket(raw, server_hostname=SERVER_NAME, session=session)
    assert tls.recv(1024) == b"* OK IMAP4 ready\r\n"
    return tls, bool(tls.session_reused)


ENDINGS = ["close without close_notify", "reset", "logout", "refused login", "timeout"]


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("cache", ["builtin", "shared"])
@pytest.mark.parametrize("ending", ENDINGS)
def test_session_stays_resumable_however_the_connection_ended(
    proxies: dict[str, Proxy], cache: str, ending: str, version: ssl.TLSVersion
) -> None:
    """nginx marks every finished TLS connection shut down, so OpenSSL keeps its session in the caches even
    when the client left without close_notify (Python's imaplib does) or reset the connection."""
    server = f"imap_{cache}_quick" if ending == "timeout" else f"imap_{cache}"
    resumed = {}
    for kind in KINDS:
        context = client_context(version=version)
        first, _ = python_session(proxies[kind].port(server), context)
        session = first.session
        end_connection(first, ending)
        second, resumed[kind] = python_session(proxies[kind].port(server), context, session)
        second.close()
    assert resumed == {"nginx": True, "mailgate": True}
