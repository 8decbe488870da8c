"""Tests of the subreaper wrapper that runs Dovecot and Postfix: nothing they start may outlive the tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.loopback import wait_until
from tests.support.subreaper import ReapedDaemon

# A daemon that, like Postfix's master, puts a worker into a new session and then keeps running.
DAEMON_WITH_ESCAPED_WORKER = "setsid sleep 1000 & exec sleep 1000"


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie has finished (it waits only for its parent, maybe a lazy PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_stop_ends_and_reaps_workers_that_left_the_process_group(tmp_path: Path) -> None:
    daemon = ReapedDaemon(["sh", "-c", DAEMON_WITH_ESCAPED_WORKER], output_path=tmp_path / "out")
    assert wait_until(lambda: len(daemon.descendants()) == 2, timeout=10)
    pids = daemon.descendants()
    daemon.stop()
    assert daemon.exit_code is not None
    assert [pid for pid in pids if _alive(pid)] == []


def test_stop_kills_a_daemon_that_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    daemon = ReapedDaemon(
        ["sh", "-c", "trap '' TERM; exec sleep 1000"], output_path=tmp_path / "out", grace_seconds=1
    )
    assert wait_until(lambda: len(daemon.descendants()) == 1, timeout=10)
    (pid,) = daemon.descendants()
    daemon.stop()
    assert daemon.exit_code == 128 + 9  # SIGKILL
    assert not _alive(pid)


def test_daemon_exit_is_reported_and_its_output_kept(tmp_path: Path) -> None:
    daemon = ReapedDaemon(["sh", "-c", "echo failing to bind; exit 3"], output_path=tmp_path / "out")
    assert wait_until(lambda: daemon.exit_code is not None, timeout=10)
    assert daemon.exit_code == 3
    assert daemon.output() == "failing to bind\n"
    assert not daemon.wait_until_ready(lambda: True, timeout=1)


def test_death_of_the_test_process_stops_the_tree_and_removes_its_directory() -> None:
    # Not tmp_path: the wrapper deletes this directory itself once its owner has died.
    workdir = Path(tempfile.mkdtemp(prefix="mailgate-subreaper-test-"))
    owner = f"""
import os, signal, sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from tests.support.subreaper import ReapedDaemon
workdir = Path({str(workdir)!r})
daemon = ReapedDaemon(["sh", "-c", {DAEMON_WITH_ESCAPED_WORKER!r}], output_path=workdir / "out",
                      orphan_cleanup_dir=workdir)
print(daemon.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    finished = subprocess.run([sys.executable, "-c", owner], capture_output=True, text=True, check=False)
    wrapper_pid = int(finished.stdout)
    assert wait_until(lambda: not _alive(wrapper_pid), timeout=20)
    assert not workdir.exists()
