"""The master and its workers: what runs, as whom, how a dead worker is replaced, stopping, the pid file,
daemon mode, log rotation with `USR1`."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.process.conftest import ConnectLoad, ImapClient, log_count, title, wait_for_log, workers
from tests.support.authserver import AuthServer
from tests.support.loopback import free_port, wait_until
from tests.support.mailgate import MAILGATE, mailgate_server

CONF = """
{main}
events {{ worker_connections {connections}; }}
mail {{
    auth_http {auth};
    server {{ listen 127.0.0.1:{port}; protocol imap; }}
}}
"""

ROOT = os.geteuid() == 0


def _conf(auth: AuthServer, port: int, main: str = "worker_processes 2;", connections: int = 256) -> str:
    return CONF.format(auth=auth.url(), port=port, main=main, connections=connections)


def test_the_master_starts_worker_processes_that_say_what_they_are_and_run_as_nobody(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    main = "worker_processes 3; worker_rlimit_nofile 4321;"
    with mailgate_server(_conf(routed_auth, port, main), open_prefix, master_process=True) as mailgate:
        master = mailgate.process.pid
        serving = workers(master, 3)
        master_title = title(master)
        owners = {pid: os.stat(f"/proc/{pid}").st_uid for pid in serving}
        limits = {pid: Path(f"/proc/{pid}/limits").read_text() for pid in serving}
        client = ImapClient(port)
        greeting = client.line()
        client.close()
    assert master_title.startswith(f"mailgate: master process {MAILGATE} -p {open_prefix}/")
    assert greeting == b"* OK IMAP4 ready\r\n"
    for pid in serving:
        assert re.search(r"Max open files\s+4321\s+4321\s", limits[pid]), limits[pid]
        if ROOT:
            assert owners[pid] == pwd.getpwnam("nobody").pw_uid
    assert log_count(mailgate.error_log, r"\[notice\] \d+#\d+: mailgate/\d") == 1
    assert log_count(mailgate.error_log, rf"\[notice\] {master}#\d+: start worker process \d+$") == 3


def test_a_killed_worker_is_replaced_and_the_port_never_stops_accepting(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    main = "worker_processes 1;"
    with mailgate_server(_conf(routed_auth, port, main), open_prefix, master_process=True) as mailgate:
        master = mailgate.process.pid
        (first,) = workers(master, 1)
        connecting = ConnectLoad(port).start()
        connecting.wait_sessions(5)
        os.kill(first, signal.SIGKILL)
        wait_for_log(
            mailgate.error_log, rf"\[alert\] {master}#\d+: worker process {first} exited on signal 9$"
        )
        (replacement,) = workers(master, 1)
        connecting.wait_sessions(10)
        connecting.stop()
    assert replacement != first
    assert connecting.refused == []
    # A session the killed worker was serving dies with it; never more than that one.
    assert len(connecting.failed) <= 1
    assert (
        log_count(mailgate.error_log, rf"\[notice\] {master}#\d+: start worker process {replacement}$") == 1
    )


def test_worker_connections_bounds_the_sessions_of_a_worker(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    conf = _conf(routed_auth, port, "worker_processes 1;", connections=2)
    with mailgate_server(conf, open_prefix, master_process=True) as mailgate:
        first, second = ImapClient(port), ImapClient(port)
        assert first.line() and second.line()
        waiting = ImapClient(port, timeout=1.0)
        with pytest.raises(TimeoutError):
            waiting.line()  # accepted by the kernel, not served while two sessions are open
        first.close()
        waiting.sock.settimeout(20)
        greeting = waiting.line()
        second.close()
        waiting.close()
    assert greeting == b"* OK IMAP4 ready\r\n"
    assert log_count(mailgate.error_log, r"\[alert\] \d+#\d+: 2 worker_connections are not enough$") >= 1


def test_the_pid_file_appears_once_the_sockets_are_bound_and_goes_on_exit(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    with mailgate_server(_conf(routed_auth, port), open_prefix, master_process=True) as mailgate:
        pid_text = mailgate.pid_file.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            assert connection.recv(100) == b"* OK IMAP4 ready\r\n"
        mailgate.signal(signal.SIGQUIT)
        assert mailgate.process.wait(30) == 0
        assert not mailgate.pid_file.exists()
    assert pid_text == f"{mailgate.process.pid}\n"
    assert log_count(mailgate.error_log, rf"\[notice\] {mailgate.process.pid}#\d+: exit$") == 1


def test_a_port_in_use_stops_the_start_before_any_pid_file(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        conf_file = open_prefix / "mailgate.conf"
        conf_file.write_text(_conf(routed_auth, port))
        pid_file = open_prefix / "mailgate.pid"
        completed = subprocess.run(
            [
                str(MAILGATE),
                "-p",
                f"{open_prefix}/",
                "-c",
                str(conf_file),
                "-g",
                f"daemon off; pid {pid_file}; error_log stderr;",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert completed.returncode == 1
    assert (
        f"[emerg] bind() to 127.0.0.1:{port} failed (98: Address already in use)" in completed.stderr.decode()
    )
    assert not pid_file.exists()


def test_daemon_on_detaches_and_stops_through_the_pid_file(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    conf_file = open_prefix / "mailgate.conf"
    conf_file.write_text(_conf(routed_auth, port, "worker_processes 1;"))
    pid_file = open_prefix / "mailgate.pid"
    given = f"pid {pid_file}; error_log {open_prefix}/error.log info;"
    command = [str(MAILGATE), "-p", f"{open_prefix}/", "-c", str(conf_file), "-g", given]
    started = subprocess.run(command, capture_output=True, timeout=60, check=False)
    try:
        assert started.returncode == 0, started.stderr
        assert wait_until(pid_file.exists, 20)
        master = int(pid_file.read_text())
        client = ImapClient(port)
        greeting = client.line()
        client.close()
        stopped = subprocess.run([*command, "-s", "quit"], capture_output=True, timeout=60, check=False)
        assert stopped.returncode == 0, stopped.stderr
        assert wait_until(lambda: not Path(f"/proc/{master}").exists(), 30)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert greeting == b"* OK IMAP4 ready\r\n"
    assert not pid_file.exists()


def test_usr1_after_moving_the_log_sends_new_lines_to_a_new_file_and_loses_none(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port = free_port()
    with mailgate_server(_conf(routed_auth, port), open_prefix, master_process=True) as mailgate:
        serving = workers(mailgate.process.pid, 2)
        connecting = ConnectLoad(port).start()
        connecting.wait_sessions(20)
        moved = open_prefix / "error.log.1"
        mailgate.error_log.rename(moved)
        mailgate.signal(signal.SIGUSR1)
        # As nginx, each process says so before it reopens: in the moved file.
        wait_for_log(moved, r"\[notice\] \d+#\d+: reopening logs$", count=1 + len(serving))
        connecting.wait_sessions(20)
        connecting.stop()
        time.sleep(0.2)  # the last session's line is written when its worker accepts, before the greeting
    logged = moved.read_text() + mailgate.error_log.read_text()
    seen = [int(port) for port in re.findall(r"\*\d+ client 127\.0\.0\.1:(\d+) connected to", logged)]
    assert sorted(seen) == sorted(connecting.client_ports)
    assert log_count(mailgate.error_log, r" connected to ") > 0
    assert connecting.refused == [] and connecting.failed == []
    if ROOT:
        assert os.stat(mailgate.error_log).st_uid == pwd.getpwnam("nobody").pw_uid


def test_workers_that_dropped_privileges_still_share_the_tls_session_cache(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com")
    certificate, key = open_prefix / "server.crt", open_prefix / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(certificate))
    leaf.private_key_pem.write_to_path(str(key))
    port = free_port()
    conf = f"""
worker_processes 2;
events {{}}
mail {{
    auth_http {routed_auth.url()};
    ssl_session_cache shared:SSL:1m;
    ssl_session_tickets off;
    ssl_protocols TLSv1.2;
    server {{
        listen 127.0.0.1:{port} ssl; protocol imap;
        ssl_certificate {certificate}; ssl_certificate_key {key};
    }}
}}
"""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    reused = []
    with mailgate_server(conf, open_prefix, master_process=True) as mailgate:
        session = None
        for _ in range(6):  # both workers get connections, with two workers accepting
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="mail.example.com", session=session) as tls,
            ):
                assert tls.recv(100) == b"* OK IMAP4 ready\r\n"
                tls.sendall(b"a LOGOUT\r\n")  # a clean TLS close: OpenSSL drops sessions of broken ones
                while tls.recv(100):
                    pass
                reused.append(tls.session_reused)
                session = tls.session
    assert reused == [False, True, True, True, True, True]
    assert log_count(mailgate.error_log, r"\[(alert|crit|error|warn)\]") == 0


def test_a_servers_own_error_log_gets_its_sessions_and_the_main_log_the_rest(
    open_prefix: Path, routed_auth: AuthServer
) -> None:
    port, own_port = free_port(), free_port()
    own_log = open_prefix / "own.log"
    conf = f"""
worker_processes 1;
events {{}}
mail {{
    auth_http {routed_auth.url()};
    server {{ listen 127.0.0.1:{port}; protocol imap; }}
    server {{ listen 127.0.0.1:{own_port}; protocol imap; error_log {own_log} info; }}
}}
"""
    with mailgate_server(conf, open_prefix, master_process=True) as mailgate:
        for target in (port, own_port):
            client = ImapClient(target)
            client.line()
            client.close()
        wait_for_log(own_log, rf" connected to 127\.0\.0\.1:{own_port}$")
        wait_for_log(mailgate.error_log, rf" connected to 127\.0\.0\.1:{port}$")
    assert log_count(own_log, rf" connected to 127\.0\.0\.1:{port}$") == 0
    assert log_count(mailgate.error_log, rf" connected to 127\.0\.0\.1:{own_port}$") == 0
