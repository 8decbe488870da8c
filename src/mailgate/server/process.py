"""What the serving process does around its sessions, in either mode: pid file, daemon, stderr, the startup
notices, the workers' user, and nginx's wording for the signals it receives."""

from __future__ import annotations

import contextlib
import grp
import os
import platform
import pwd
import resource
import signal
from pathlib import Path

from mailgate import __version__
from mailgate.config.model import Config, LogLevel
from mailgate.log import ErrorLog
from mailgate.server.worker import WorkerUser

# nginx's defaults when `user` is not given and the master runs as root.
DEFAULT_USER = "nobody"
DEFAULT_GROUPS = ("nogroup", "nobody")

# What nginx appends to `signal N (SIGX) received from PID` for each signal it acts on. USR2 (nginx's binary
# upgrade) and WINCH are logged without an action: mailgate ignores them.
SIGNAL_ACTIONS = {
    signal.SIGHUP: ", reconfiguring",
    signal.SIGQUIT: ", shutting down",
    signal.SIGTERM: ", exiting",
    signal.SIGINT: ", exiting",
    signal.SIGUSR1: ", reopening logs",
}


# uvloop runs on libuv, which uses epoll on Linux: the line nginx logs at start and at each reload.
EVENT_METHOD = 'using the "epoll" event method'


def signal_received(signum: int, sender: int) -> str:
    """nginx's `signal 1 (SIGHUP) received from 1234, reconfiguring`."""
    name = signal.Signals(signum).name
    origin = f" from {sender}" if sender else ""
    return f"signal {signum} ({name}) received{origin}{SIGNAL_ACTIONS.get(signal.Signals(signum), '')}"


def write_pid_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, path)  # never a half-written pid file for a script to read


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()


def daemonize() -> None:
    """Detach from the terminal as nginx does (`daemon on`): fork, new session, stdin and stdout to /dev/null.

    stderr stays until `redirect_stderr` points it at the error log."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)


def redirect_stderr(main_log: ErrorLog) -> None:
    """As nginx: unless a log writes to stderr, stderr becomes the first error_log file, so that whatever
    else writes there (a traceback) ends up in the log rather than on a terminal nobody watches."""
    if main_log.uses_stderr:
        return
    fd = main_log.first_file_fd()
    if fd is not None and fd != 2:
        os.dup2(fd, 2)


def log_startup(main_log: ErrorLog) -> None:
    """The notices nginx starts with: event method, version, OS, descriptor limit."""
    main_log.log(LogLevel.NOTICE, EVENT_METHOD)
    main_log.log(LogLevel.NOTICE, f"mailgate/{__version__}")
    main_log.log(LogLevel.NOTICE, f"OS: {platform.system()} {platform.release()}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    main_log.log(LogLevel.NOTICE, f"getrlimit(RLIMIT_NOFILE): {_limit(soft)}:{_limit(hard)}")


def _limit(value: int) -> str:
    return "-1" if value == resource.RLIM_INFINITY else str(value)


def worker_user(config: Config) -> WorkerUser | None:
    """The user workers switch to: only when the master is root (`user`, else nobody and nogroup)."""
    if os.geteuid() != 0:
        return None
    name = config.main.user or DEFAULT_USER
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return None  # the loader checked a written `user`; without one and without nobody, stay root
    groups = (config.main.group,) if config.main.group else DEFAULT_GROUPS
    for group in groups:
        with contextlib.suppress(KeyError):
            return WorkerUser(name, uid, grp.getgrnam(group).gr_gid)
    return WorkerUser(name, uid, pwd.getpwnam(name).pw_gid)
