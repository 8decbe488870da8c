"""Run a daemon so that stopping it stops and reaps its whole process tree, even if the tests crash.

A ``ReapedDaemon`` starts this file as a small wrapper process
(``python subreaper.py PARENT_PID GRACE_SECONDS ORPHAN_CLEANUP_DIR -- argv``) that makes itself a Linux child
subreaper, runs the daemon in the foreground as its only direct child and reaps every descendant. On
SIGTERM, on the daemon's exit, or on the death of the test process (SIGHUP, its parent-death signal) it
sends SIGTERM to every descendant, waits the grace period, SIGKILLs what is left and exits once nothing
is left, so "the wrapper has exited" means "the daemon's whole tree is gone". If the test process died,
the wrapper also deletes the daemon's directory, which nobody else would.

Why not plain ``Popen(start_new_session=True)`` plus ``killpg``:
- Postfix's ``master`` calls ``setsid()`` and Dovecot's children may outlive a killed master; a process
  group does not contain them, a subreaper's subtree does (orphans re-parent to the nearest subreaper).
- ``PR_SET_PDEATHSIG`` on the daemon itself is silently cleared when the daemon changes credentials
  (Postfix's ``master`` does), so a crashed pytest worker would leak daemons holding ports; the wrapper
  never changes credentials, so its own parent-death signal holds.
- In some sandboxes PID 1 reaps orphans late; reaping them here leaves no zombie behind.

Linux only (prctl). The wrapper uses nothing but the standard library so it runs as a bare script.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

# Default seconds the wrapper waits after SIGTERM before it SIGKILLs the descendants still alive.
GRACE_SECONDS = 10


def _descendants_of(root_pid: int) -> list[int]:
    """Live descendants of ``root_pid`` (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; the fields after the last ')' do not.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [root_pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _signal_descendants(sig: int) -> None:
    for pid in _descendants_of(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wrapper_main(argv: list[str]) -> int:
    parent_pid = int(argv[0])
    grace_seconds = int(argv[1])
    orphan_cleanup_dir = argv[2]
    command = argv[4:]
    stopping = False
    orphaned = False

    def begin_stop(*_: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            _signal_descendants(signal.SIGTERM)
            signal.alarm(grace_seconds)

    def kill_rest(_signum: int, _frame: FrameType | None) -> None:
        _signal_descendants(signal.SIGKILL)

    def parent_died(*_: object) -> None:
        nonlocal orphaned
        orphaned = True
        begin_stop()

    def finish(exit_code: int) -> int:
        if orphaned and orphan_cleanup_dir:
            shutil.rmtree(orphan_cleanup_dir, ignore_errors=True)
        return exit_code

    # Handlers first: the parent-death signal may arrive the moment it is armed.
    signal.signal(signal.SIGTERM, begin_stop)
    signal.signal(signal.SIGINT, begin_stop)
    signal.signal(signal.SIGHUP, parent_died)
    signal.signal(signal.SIGALRM, kill_rest)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    if os.getppid() != parent_pid:
        parent_died()  # the test process died before the parent-death signal was armed
    if stopping:
        return finish(1)
    daemon = subprocess.Popen(command)
    exit_code = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return finish(exit_code)
        if pid == daemon.pid:
            daemon.returncode = os.waitstatus_to_exitcode(status)
            exit_code = daemon.returncode if daemon.returncode >= 0 else 128 - daemon.returncode
            begin_stop()


class ReapedDaemon:
    """A foreground daemon run under the subreaper wrapper; ``stop()`` returns once its tree is gone.

    stdout and stderr of the daemon go to ``output_path`` (appended), which callers show on failure.
    What is still alive ``grace_seconds`` after SIGTERM is SIGKILLed. ``orphan_cleanup_dir`` is deleted
    after the tree is gone if the test process died first. The parent-death signal follows the thread
    that creates the ``ReapedDaemon``: create it from a thread that lives as long as the daemon should.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        output_path: Path,
        orphan_cleanup_dir: Path | None = None,
        grace_seconds: int = GRACE_SECONDS,
    ) -> None:
        self.argv = tuple(argv)
        self.output_path = output_path
        self.grace_seconds = grace_seconds
        wrapper_argv = [str(os.getpid()), str(grace_seconds), str(orphan_cleanup_dir or ""), "--", *self.argv]
        with output_path.open("ab") as output:
            self._wrapper = subprocess.Popen(
                [sys.executable, __file__, *wrapper_argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The wrapper's pid (the daemon is its child)."""
        return self._wrapper.pid

    @property
    def exit_code(self) -> int | None:
        """None while the daemon's tree is alive, else the daemon's exit code (128+N if killed by N)."""
        return self._wrapper.poll()

    def output(self) -> str:
        """What the daemon has written to stdout/stderr so far."""
        return self.output_path.read_text(errors="replace")

    def descendants(self) -> list[int]:
        """Pids of the daemon and everything it started that is still alive."""
        return [] if self.exit_code is not None else _descendants_of(self._wrapper.pid)

    def wait_until_ready(self, is_ready: Callable[[], bool], timeout: float) -> bool:
        """True once ``is_ready()`` holds; False (daemon stopped) if it exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while self.exit_code is None and time.monotonic() < deadline:
            if is_ready():
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        """Terminate the daemon's whole tree and wait until it is gone; idempotent."""
        if self._wrapper.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._wrapper.send_signal(signal.SIGTERM)
            timeout = self.grace_seconds + 5
            try:
                self._wrapper.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in [*_descendants_of(self._wrapper.pid), self._wrapper.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._wrapper.wait(timeout)


if __name__ == "__main__":
    sys.exit(_wrapper_main(sys.argv[1:]))
