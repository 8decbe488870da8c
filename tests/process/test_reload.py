"""`HUP` as nginx: new workers on the new configuration first, then the old ones finish their sessions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.process.conftest import (
    ConnectLoad,
    ImapClient,
    RelayLoad,
    log_count,
    wait_for_log,
    workers,
)
from tests.support.authserver import AuthServer
from tests.support.loopback import free_port
from tests.support.mailgate import RunningMailgate, mailgate_command, mailgate_server

CONF = """
worker_processes 2;
worker_shutdown_timeout {shutdown_timeout};
events {{ worker_connections 256; }}
mail {{
    auth_http {auth};
    imap_capabilities IMAP4rev1 {generation};
    session_log {prefix}/sessions.log json;
    server {{ listen 127.0.0.1:{port}; protocol imap; }}
}}
"""


def _conf(auth: AuthServer, prefix: Path, port: int, generation: str, shutdown_timeout: str = "60s") -> str:
    return CONF.format(
        auth=auth.url(), prefix=prefix, port=port, generation=generation, shutdown_timeout=shutdown_timeout
    )


def _signal_through_pid_file(mailgate: RunningMailgate, name: str) -> None:
    """`mailgate -s NAME`, with the same -p/-c/-g as the running server (so the same pid file)."""
    given = f"daemon off; master_process on; pid {mailgate.pid_file}; error_log {mailgate.error_log} info;"
    command = mailgate_command(mailgate.prefix, mailgate.conf_file, "-g", given, "-s", name)
    completed = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr


def test_reload_under_load_finishes_old_sessions_intact_and_serves_new_ones_on_the_new_configuration(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    with mailgate_server(
        _conf(routed_auth, open_prefix, port, "GEN1"), open_prefix, master_process=True
    ) as mailgate:
        old_workers = workers(mailgate.process.pid, 2)
        relays = [RelayLoad.start(port) for _ in range(6)]
        for relay in relays:
            relay.wait_round_trips(20)
        connecting = ConnectLoad(port).start()
        connecting.wait_sessions(5)

        mailgate.conf_file.write_text(_conf(routed_auth, open_prefix, port, "GEN2"))
        _signal_through_pid_file(mailgate, "reload")
        wait_for_log(mailgate.error_log, r"gracefully shutting down$", count=len(old_workers))
        # The one session in flight now may have been accepted by an old worker before it stopped.
        served_before = len(connecting.capabilities) + 1
        connecting.wait_sessions(10)
        for relay in relays:
            relay.wait_round_trips(50)  # the old sessions still relay, through the old workers
        connecting.stop()
        for relay in relays:
            relay.stop()
            relay.client.close()
        wait_for_log(mailgate.error_log, r"exited with code 0$", count=len(old_workers))
        new_workers = workers(mailgate.process.pid, 2)

    assert all(b" GEN1 " in relay.capability for relay in relays)
    for relay in relays:
        assert relay.error is None
        assert relay.sent.digest() == relay.received.digest()
    assert connecting.refused == []
    assert connecting.failed == []
    assert all(b" GEN2 " in line for line in connecting.capabilities[served_before:])
    assert set(new_workers).isdisjoint(old_workers)
    relayed = [json.loads(line) for line in (open_prefix / "sessions.log").read_text().splitlines()]
    relayed = [entry for entry in relayed if entry["auth"] == "ok"]
    assert len(relayed) == len(relays)
    assert [(entry["end"], entry["bytes_from_client"] > 0) for entry in relayed] == [
        ("client closed", True)
    ] * len(relays)


def test_reload_with_a_short_shutdown_timeout_closes_the_old_sessions_on_time(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    conf = _conf(routed_auth, open_prefix, port, "GEN1", shutdown_timeout="1s")
    with mailgate_server(conf, open_prefix, master_process=True) as mailgate:
        old_workers = workers(mailgate.process.pid, 2)
        old = [ImapClient(port) for _ in range(3)]
        for client in old:
            client.line()
            client.login()
        mailgate.conf_file.write_text(_conf(routed_auth, open_prefix, port, "GEN2", shutdown_timeout="1s"))
        mailgate.signal(signal.SIGHUP)
        closed = [client.closed_by_server() for client in old]
        wait_for_log(mailgate.error_log, r"exited with code 0$", count=len(old_workers))
        fresh = ImapClient(port)
        fresh.line()
        capability = fresh.capability()
        fresh.close()

    assert closed == [True, True, True]
    assert log_count(mailgate.error_log, r"\[info\] \d+#\d+: \*\d+ shutdown timeout while proxying") == 3
    entries = [json.loads(line) for line in (open_prefix / "sessions.log").read_text().splitlines()]
    assert [entry["end"] for entry in entries if entry["auth"] == "ok"] == ["shutdown timeout"] * 3
    assert b" GEN2 " in capability


def test_a_broken_configuration_is_logged_and_the_old_one_keeps_serving(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    with mailgate_server(
        _conf(routed_auth, open_prefix, port, "GEN1"), open_prefix, master_process=True
    ) as mailgate:
        serving = workers(mailgate.process.pid, 2)
        good = mailgate.conf_file.read_text()
        mailgate.conf_file.write_text(good.replace("mail {", "bogus on;\nmail {"))
        mailgate.signal(signal.SIGHUP)
        wait_for_log(
            mailgate.error_log, rf'\[emerg\] \d+#\d+: unknown directive "bogus" in {mailgate.conf_file}:'
        )
        client = ImapClient(port)
        client.line()
        still_old = client.capability()
        client.close()
        unchanged_workers = workers(mailgate.process.pid, 2)

        mailgate.conf_file.write_text(_conf(routed_auth, open_prefix, port, "GEN2"))
        mailgate.signal(signal.SIGHUP)
        wait_for_log(mailgate.error_log, r"exited with code 0$", count=len(serving))
        client = ImapClient(port)
        client.line()
        now_new = client.capability()
        client.close()

    assert b" GEN1 " in still_old
    assert unchanged_workers == serving
    assert b" GEN2 " in now_new


def test_a_reload_that_cannot_bind_a_new_address_keeps_the_old_generation(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    with mailgate_server(
        _conf(routed_auth, open_prefix, port, "GEN1"), open_prefix, master_process=True
    ) as mailgate:
        serving = workers(mailgate.process.pid, 2)
        taken = free_port()
        with socket.create_server(("127.0.0.1", taken)):  # someone else holds the new address
            extra = f"    server {{ listen 127.0.0.1:{taken}; protocol imap; }}\n}}\n"
            conf = _conf(routed_auth, open_prefix, port, "GEN2")
            mailgate.conf_file.write_text(conf.rstrip().removesuffix("}") + extra)
            mailgate.signal(signal.SIGHUP)
            wait_for_log(
                mailgate.error_log, rf"\[emerg\] \d+#\d+: bind\(\) to 127\.0\.0\.1:{taken} failed \(98: "
            )
        client = ImapClient(port)
        client.line()
        capability = client.capability()
        client.close()
        assert workers(mailgate.process.pid, 2) == serving
    assert b" GEN1 " in capability


def test_without_a_master_process_a_reload_serves_new_sessions_beside_the_old_ones(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    with mailgate_server(_conf(routed_auth, open_prefix, port, "GEN1"), open_prefix) as mailgate:
        relay = RelayLoad.start(port)
        relay.wait_round_trips(10)
        mailgate.conf_file.write_text(_conf(routed_auth, open_prefix, port, "GEN2"))
        os.kill(mailgate.process.pid, signal.SIGHUP)
        wait_for_log(mailgate.error_log, r"\[notice\] \d+#\d+: reconfiguring$")
        connecting = ConnectLoad(port).start()
        connecting.wait_sessions(3)
        connecting.stop()
        relay.wait_round_trips(20)
        relay.stop()
        relay.client.close()

    assert relay.error is None and relay.sent.digest() == relay.received.digest()
    assert b" GEN1 " in relay.capability
    assert connecting.capabilities and all(b" GEN2 " in line for line in connecting.capabilities)
