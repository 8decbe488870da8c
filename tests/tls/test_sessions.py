"""ssl_session_cache × ssl_session_tickets × protocol version, timeouts, the shared zone across processes."""

import multiprocessing
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate.config.model import SessionCache
from mailgate.tls import ServerTls, build_server_context
from mailgate.tls.sessions import SharedSessionCache
from tests.tls.support import (
    Pki,
    pair,
    python_client_context,
    python_connect,
    resumes,
    s_client,
    server_config,
    serving,
    unique_zone,
)

# Observed on nginx 1.22.1 (mail, same OpenSSL): resumption happens iff tickets are on or a cache stores.
CACHES = {
    "off": lambda: SessionCache(mode="off"),
    "none": lambda: SessionCache(mode="none"),
    "builtin": lambda: SessionCache(mode="cache", builtin=True),
    "builtin:1000": lambda: SessionCache(mode="cache", builtin=True, builtin_size=1000),
    "shared": lambda: SessionCache(mode="cache", shared=unique_zone()),
    "builtin+shared": lambda: SessionCache(mode="cache", builtin=True, shared=unique_zone()),
}


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("tickets", [True, False], ids=["tickets-on", "tickets-off"])
@pytest.mark.parametrize("cache", list(CACHES))
def test_resumption_per_cache_and_tickets(
    pki: Pki, tmp_path: Path, cache: str, tickets: bool, version: str
) -> None:
    server = server_config((pair(*pki.server_ecdsa),), session_cache=CACHES[cache](), session_tickets=tickets)
    with serving(build_server_context(server)) as running:
        resumed = resumes(running.port, version, tmp_path / "session.pem")
    assert resumed == (tickets or cache not in ("off", "none"))


@pytest.mark.parametrize(("cache", "hands_out_id"), [("none", True), ("off", False)])
def test_none_cache_hands_out_session_ids_and_off_does_not(
    pki: Pki, tmp_path: Path, cache: str, hands_out_id: bool
) -> None:
    server = server_config((pair(*pki.server_ecdsa),), session_cache=CACHES[cache](), session_tickets=False)
    with serving(build_server_context(server)) as running:
        first = s_client(running.port, "-tls1_2")
        assert not resumes(running.port, "-tls1_2", tmp_path / "session.pem")
    session_id = re.search(r"Session-ID: ([0-9A-F]*)\n", first.output)
    assert session_id is not None
    assert bool(session_id.group(1)) == hands_out_id


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_stops_resuming_after_the_timeout(pki: Pki, tmp_path: Path, version: str) -> None:
    server = server_config(
        (pair(*pki.server_ecdsa),),
        session_cache=SessionCache(mode="cache", shared=unique_zone()),
        session_tickets=False,
        session_timeout=1.0,
    )
    session_file = tmp_path / "session.pem"
    with serving(build_server_context(server)) as running:
        assert s_client(running.port, version, "-sess_out", session_file).handshake_done
        time.sleep(2.2)
        late = s_client(running.port, version, "-sess_in", session_file)
    assert late.handshake_done and not late.reused


def _serve_in_child(tls_server: ServerTls, listener: socket.socket, ready: Any) -> None:
    with serving(tls_server, listener):
        ready.set()
        signal.pause()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_shared_cache_resumes_a_session_in_another_process(pki: Pki, tmp_path: Path, version: str) -> None:
    server = server_config(
        (pair(*pki.server_ecdsa),),
        session_cache=SessionCache(mode="cache", shared=unique_zone()),
        session_tickets=False,
    )
    tls_server = build_server_context(server)  # built before fork, as the master does
    fork = multiprocessing.get_context("fork")
    workers = []
    ports = []
    for _ in range(2):
        listener = socket.create_server(("127.0.0.1", 0))
        ports.append(listener.getsockname()[1])
        ready = fork.Event()
        worker = fork.Process(target=_serve_in_child, args=(tls_server, listener, ready), daemon=True)
        worker.start()
        listener.close()
        assert ready.wait(10)
        workers.append(worker)
    try:
        session_file = tmp_path / "session.pem"
        first = s_client(ports[0], version, "-sess_out", session_file)
        second = s_client(ports[1], version, "-sess_in", session_file)
    finally:
        for worker in workers:
            os.kill(worker.pid or 0, signal.SIGTERM)
            worker.join(10)
    assert first.handshake_done and not first.reused
    assert second.reused


def test_builtin_cache_does_not_resume_in_another_process(pki: Pki, tmp_path: Path) -> None:
    server = server_config(
        (pair(*pki.server_ecdsa),),
        session_cache=SessionCache(mode="cache", builtin=True),
        session_tickets=False,
    )
    tls_server = build_server_context(server)
    fork = multiprocessing.get_context("fork")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ready = fork.Event()
    worker = fork.Process(target=_serve_in_child, args=(tls_server, listener, ready), daemon=True)
    worker.start()
    listener.close()
    try:
        assert ready.wait(10)
        session_file = tmp_path / "session.pem"
        with serving(tls_server) as here:
            assert s_client(here.port, "-tls1_2", "-sess_out", session_file).handshake_done
            assert s_client(here.port, "-tls1_2", "-sess_in", session_file).reused
        elsewhere = s_client(port, "-tls1_2", "-sess_in", session_file)
    finally:
        os.kill(worker.pid or 0, signal.SIGTERM)
        worker.join(10)
    assert elsewhere.handshake_done and not elsewhere.reused


def test_shared_zone_evicts_the_oldest_session_when_full(tmp_path: Path) -> None:
    zone = SharedSessionCache("small", 32 * 1024)
    stored = [zone.store(i.to_bytes(32, "big"), b"x" * 150, 300) for i in range(200)]
    assert all(stored)
    assert len(zone) == 128  # 32 KiB at 256 bytes a session
    assert zone.fetch((0).to_bytes(32, "big")) is None
    assert zone.fetch((199).to_bytes(32, "big")) == b"x" * 150


def test_shared_zone_drops_expired_sessions(tmp_path: Path) -> None:
    zone = SharedSessionCache("expiring", 1 << 20)
    zone.store(b"a" * 32, b"session", 0)
    assert zone.fetch(b"a" * 32) is None
    assert len(zone) == 0


def test_shared_zone_refuses_oversized_sessions(tmp_path: Path) -> None:
    zone = SharedSessionCache("big", 1 << 20)
    assert not zone.store(b"a" * 32, b"x" * 8193, 300)
    assert not zone.store(b"a" * 33, b"x", 300)
    assert zone.store(b"a" * 32, b"x" * 8192, 300)


def _ticket_lifetime_hint(session_file: Path) -> int:
    text = subprocess.run(
        ["openssl", "sess_id", "-in", str(session_file), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"lifetime hint: (\d+)", text)
    assert match is not None, text
    return int(match.group(1))


def test_tls13_resumption_does_not_extend_a_sessions_lifetime(pki: Pki, tmp_path: Path) -> None:
    server = server_config((pair(*pki.server_ecdsa),))
    first, renewed = tmp_path / "first.pem", tmp_path / "renewed.pem"
    with serving(build_server_context(server)) as running:
        assert s_client(running.port, "-tls1_3", "-sess_out", first).handshake_done
        time.sleep(1.2)  # let the clock pass at least one whole second
        resumed = s_client(running.port, "-tls1_3", "-sess_in", first, "-sess_out", renewed)
    assert resumed.reused
    assert _ticket_lifetime_hint(first) == 300
    assert _ticket_lifetime_hint(renewed) < 300


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_client_resumes_a_session(pki: Pki, version: ssl.TLSVersion) -> None:
    server = server_config((pair(*pki.server_ecdsa),), session_cache=SessionCache(mode="cache", builtin=True))
    context = python_client_context(maximum_version=version, minimum_version=version)
    with serving(build_server_context(server)) as running:
        _greeting, session, first_resumed = python_connect(running.port, context)
        _greeting, _session, second_resumed = python_connect(running.port, context, session)
        facts = [running.next_accepted().facts for _ in range(2)]
    assert not first_resumed and second_resumed
    assert [fact.resumed for fact in facts] == [False, True]


def test_a_zone_too_small_for_any_session_only_costs_resumption(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Below the 32 KiB the configuration allows, so that no session fits: the store fails in the
    # handshake's own callback, the handshake goes on, and nginx's warning is logged once a second.
    zone = unique_zone(size=100)
    server = server_config(
        (pair(*pki.server_ecdsa),),
        session_cache=SessionCache(mode="cache", shared=zone),
        session_tickets=False,
    )
    with caplog.at_level("WARNING", logger="mailgate.tls"), serving(build_server_context(server)) as running:
        assert not resumes(running.port, "-tls1_2", tmp_path / "session.pem")
        assert not resumes(running.port, "-tls1_2", tmp_path / "session.pem")
    warnings = [record.getMessage() for record in caplog.records if record.name == "mailgate.tls"]
    assert warnings and len(warnings) <= 2  # four failed stores, at most two seconds
    assert set(warnings) == {f'could not allocate new session in SSL session shared cache "{zone.name}"'}


def _leave_without_close_notify(
    port: int, context: ssl.SSLContext, *, reset: bool = False, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession | None, bool]:
    """Handshake, read the greeting and go: a plain close (as Python's ssl closes) or a reset.
    The session to resume, and whether this one was resumed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw, session=session)
    try:
        assert tls.recv(1024) == b"* OK ready\r\n"
        if reset:
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return tls.session, bool(tls.session_reused)
    finally:
        tls.close()


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("cache", ["builtin", "shared"])
@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_session_stays_resumable_when_the_client_leaves_without_close_notify(
    pki: Pki, cache: str, version: ssl.TLSVersion, reset: bool
) -> None:
    """nginx marks every finished connection shut down (ngx_ssl_shutdown), so OpenSSL keeps its session."""
    server = server_config((pair(*pki.server_ecdsa),), session_cache=CACHES[cache](), session_tickets=False)
    context = python_client_context(maximum_version=version, minimum_version=version)
    with serving(build_server_context(server), waits_for_the_client=True) as running:
        session, _resumed = _leave_without_close_notify(running.port, context, reset=reset)
        running.wait_closed()
        _session, resumed = _leave_without_close_notify(running.port, context, session=session)
    assert resumed
