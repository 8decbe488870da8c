"""Sessions whose front runs in C (`Peer.start_front`): with error_log above info and no session log,
mailgate runs the TLS handshake, the greeting and the wait for the first command before a session exists.
What clients see must not change: the same greetings and replies, the same auth requests (TLS facts
included), and connections that end before a command end quietly without holding a worker_connections slot.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path

from tests.e2e_tls.support import (
    IMAP_GREETING,
    REFUSAL,
    Conversation,
    client_context,
    mail_config,
    running,
)
from tests.process.conftest import wait_for_log
from tests.support.loopback import IPV4_LOOPBACK
from tests.tls.support import Pki

TEMPLATE = mail_config(
    """
    timeout 2s;
    server { listen 127.0.0.1:$imaps ssl; protocol imap; }
    server { listen 127.0.0.1:$imap; protocol imap; starttls on; }
    server { listen 127.0.0.1:$pop3; protocol pop3; }
"""
)
# Only a few slots: sessions that end in their front must give theirs back.
DIRECTIVES = "events { worker_connections 6; }\n"


def _template() -> str:
    return TEMPLATE.replace("events {\n}\n", DIRECTIVES)


def test_an_imaps_login_after_a_c_front_reaches_the_auth_service_with_the_tls_facts(
    pki: Pki, tmp_path: Path
) -> None:
    with (
        running("mailgate", _template(), pki.directory, tmp_path, log_level="notice") as proxy,
        Conversation.open(proxy.port("imaps"), client_context(version=ssl.TLSVersion.TLSv1_3)) as client,
    ):
        assert client.line() == IMAP_GREETING
        client.send(b"a1 LOGIN user secret\r\n")
        assert client.reply("imap", b"a1") == f"a1 NO {REFUSAL}\r\n".encode()
        (request,) = proxy.auth.requests
        assert request.header("Auth-SSL") == "on"
        assert request.header("Auth-SSL-Protocol") == "TLSv1.3"
        assert request.header("Auth-User") == "user"


def test_starttls_and_pop3_sessions_after_a_greeting_sent_from_c(pki: Pki, tmp_path: Path) -> None:
    with running("mailgate", _template(), pki.directory, tmp_path, log_level="notice") as proxy:
        with Conversation.open(proxy.port("imap")) as client:
            assert client.line() == IMAP_GREETING
            client.send(b"a STARTTLS\r\n")
            assert client.line() == b"a OK completed\r\n"
            client.start_tls(client_context())
            client.send(b"b LOGIN user secret\r\n")
            assert client.reply("imap", b"b") == f"b NO {REFUSAL}\r\n".encode()
        with Conversation.open(proxy.port("pop3")) as client:
            assert client.line() == b"+OK POP3 ready\r\n"
            client.send(b"USER user\r\nPASS secret\r\n")
            assert client.line() == b"+OK\r\n"
            assert client.line() == f"-ERR {REFUSAL}\r\n".encode()
        assert [request.header("Auth-Protocol") for request in proxy.auth.requests] == ["imap", "pop3"]


def test_clients_that_leave_before_a_command_free_their_slots_and_log_nothing(
    pki: Pki, tmp_path: Path
) -> None:
    with running("mailgate", _template(), pki.directory, tmp_path, log_level="notice") as proxy:
        for _ in range(20):  # more than worker_connections, one after another
            with socket.create_connection((IPV4_LOOPBACK, proxy.port("imaps")), timeout=10) as raw:
                tls = client_context().wrap_socket(raw)
                assert tls.recv(100) == IMAP_GREETING
        idle = socket.create_connection((IPV4_LOOPBACK, proxy.port("imap")), timeout=10)
        assert idle.recv(100) == IMAP_GREETING
        started = time.monotonic()
        assert idle.recv(100) == b""  # `timeout 2s` after the greeting, as nginx
        assert 1.5 < time.monotonic() - started < 10
        idle.close()
        with Conversation.open(proxy.port("imaps"), client_context()) as client:
            assert client.line() == IMAP_GREETING  # every slot is free again
        log = proxy.log_text()
        assert "worker_connections are not enough" not in log
        assert "[info]" not in log and "[crit]" not in log and "[alert]" not in log


def test_fronts_count_against_worker_connections_and_a_freed_slot_accepts_the_next(
    pki: Pki, tmp_path: Path
) -> None:
    """Fronts the listener runs in C hold slots as sessions do: at worker_connections nginx's alert and no
    accepting, and a front that ends in C (its client left) lets the next connection in."""
    # The others wait far longer than this test: only the one that leaves can free a slot.
    template = _template().replace("timeout 2s;", "timeout 60s;")
    with running("mailgate", template, pki.directory, tmp_path, log_level="notice") as proxy:
        port = proxy.port("imaps")
        holding = []
        for _ in range(6):
            tls = client_context().wrap_socket(socket.create_connection((IPV4_LOOPBACK, port), timeout=10))
            assert tls.recv(100) == IMAP_GREETING
            holding.append(tls)
        waiting = client_context().wrap_socket(
            socket.create_connection((IPV4_LOOPBACK, port), timeout=10), do_handshake_on_connect=False
        )
        waiting.settimeout(0.5)
        try:
            waiting.do_handshake()
            raise AssertionError("a seventh connection was served")
        except TimeoutError:
            pass  # not accepted: every slot is taken
        assert "6 worker_connections are not enough" in proxy.log_text()
        holding.pop().close()  # its front ends in C and gives its slot back
        waiting.settimeout(10)
        waiting.do_handshake()
        assert waiting.recv(100) == IMAP_GREETING
        for tls in [*holding, waiting]:
            tls.close()


def test_a_graceful_stop_waits_for_a_front_and_ends_once_it_ended_in_c(pki: Pki) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailgate-front-"))
    directory.chmod(0o755)  # the workers run as nobody
    try:
        with running(
            "mailgate", _template(), pki.directory, directory, log_level="notice", master_process=True
        ) as proxy:
            idle = client_context().wrap_socket(
                socket.create_connection((IPV4_LOOPBACK, proxy.port("imaps")), timeout=10)
            )
            assert idle.recv(100) == IMAP_GREETING
            master = int((directory / "mailgate.pid").read_text())
            os.kill(master, signal.SIGQUIT)
            wait_for_log(proxy.error_log, r"gracefully shutting down$")
            assert idle.recv(100) == b""  # its `timeout 2s` ends it, in C
            idle.close()
            deadline = time.monotonic() + 20
            while (directory / "mailgate.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not (directory / "mailgate.pid").exists()  # the worker was not left waiting for it
    finally:
        shutil.rmtree(directory, ignore_errors=True)
