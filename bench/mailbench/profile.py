"""Sampling mailgate's workers with py-spy while a scenario runs, and summing the samples per function."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# "function (path/to/file.py:123)" as py-spy's raw (collapsed) format prints a frame.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class FunctionCost:
    name: str  # "function (package/module.py)"
    self_share: float  # of all busy samples, in the function itself
    total_share: float  # of all busy samples, in the function or below it


@dataclass(frozen=True)
class Profile:
    key: str  # the scenario's key
    scenario: str  # its title
    samples: int
    top_self: list[FunctionCost]
    top_total: list[FunctionCost]
    by_area: list[tuple[str, float]]  # share of busy samples per mailgate package or library (leaf frame)


def py_spy_binary(venv_bin: Path) -> str | None:
    candidate = venv_bin / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


RATE = 250


def start(py_spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Record `pid` and its children (the workers) for `seconds`, busy threads only.

    Without pausing the process (`--nonblocking`), hence without native frames: py-spy's native mode stops
    the process for every sample, which here charged about three times more samples to system calls than
    the kernel's own accounting (/proc stime) says they cost. The table's kernel column gives that split.
    """
    argv = [
        py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", str(RATE),
        "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# Leaf frames in libc that are system calls: their time is the kernel's (loopback TCP included).
_SYSCALLS = frozenset(
    [
        "write",
        "read",
        "writev",
        "readv",
        "send",
        "sendto",
        "sendmsg",
        "recv",
        "recvfrom",
        "recvmsg",
        "connect",
        "accept",
        "accept4",
        "close",
        "socket",
        "setsockopt",
        "getsockopt",
        "getsockname",
        "getpeername",
        "epoll_wait",
        "epoll_pwait",
        "epoll_ctl",
        "syscall",
        "getpid",
        "ioctl",
        "io_uring_enter",
        "__libc_write",
        "__libc_read",
        "uv__close_nocancel",
    ]
)
# Leaf frames where the worker waits for events: idle, not cost.
_IDLE = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
_CTYPES_FILES = frozenset({"callproc.c", "cfield.c", "_ctypes.c", "stgdict.c"})


def _parts(frame: str) -> tuple[str, str]:
    """(function, file without line number) of a py-spy frame."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match["function"], match["file"]


def _is_python(frame: str) -> bool:
    return _parts(frame)[1].endswith(".py") or _parts(frame)[1] == "<string>"


def _short(frame: str) -> str:
    function, path = _parts(frame)
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{function} ({path})"


def _area(frame: str) -> str:
    """What the innermost frame of a sample is: Python code (by package), or which native library."""
    function, path = _parts(frame)
    name = path.rsplit("/", 1)[-1]
    if function == "Runner.run":
        return "event loop: uvloop and mailgate's C layer (sockets, TLS, relay), system calls"
    if _is_python(frame):
        inside = _short(frame)[len(function) + 2 : -1]
        if inside.startswith("mailgate/"):
            return "Python: " + "/".join(inside.split("/")[:2])
        return "Python: " + (inside.split("/")[0] if "/" in inside else inside)
    if name.startswith(("libcrypto", "libssl")):
        return "libssl/libcrypto (TLS)"
    if function in _SYSCALLS or function.startswith("__GI___"):
        return "system calls (kernel)"
    if name.startswith("libc.so"):
        return "libc"
    if name == "loop.c" or function.startswith("__pyx"):
        return "uvloop (Cython)"
    if function.startswith("uv_") or function.startswith("uv__"):
        return "libuv"
    if name == "_ssl.c":
        return "CPython _ssl module"
    if name in _CTYPES_FILES:
        return "ctypes (libssl binding)"
    return "CPython runtime (objects, calls, GC)"


def summarize(raw: Path, key: str, scenario: str, top: int = 15) -> Profile:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    area_counts: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if _FRAME.match(f.strip())]
        python = [f for f in frames if _is_python(f)]
        if not frames or _parts(frames[-1])[0] in _IDLE:
            continue
        samples += count
        area_counts[_area(frames[-1])] += count
        if python:  # own time: the innermost Python frame, with the C it calls
            self_counts[_short(python[-1])] += count
        for name in {_short(f) for f in python}:
            total_counts[name] += count
    if not samples:
        return Profile(key, scenario, 0, [], [], [])

    def costs(counter: Counter[str]) -> list[FunctionCost]:
        return [
            FunctionCost(name, self_counts[name] / samples, total_counts[name] / samples)
            for name, count in counter.most_common()
            if count < 0.9 * samples  # entry frames (main, the event loop's run) say nothing
        ][:top]

    areas = [(name, count / samples) for name, count in area_counts.most_common(top)]
    return Profile(key, scenario, samples, costs(self_counts), costs(total_counts), areas)


def markdown(profile: Profile, cpu_ms_per_session: float | None = None) -> str:
    """The profile's tables; with the scenario's measured CPU per session, each share also in ms."""
    if not profile.samples:
        return f"No samples for {profile.scenario} (py-spy missing or not permitted).\n"
    lines = [
        f"{profile.samples} busy samples over the workers (py-spy --nonblocking, {RATE} Hz).",
        "",
    ]
    lines += [
        "Python functions by own time (C code and system calls are charged to their Python caller):",
        "",
    ]

    def ms(share: float) -> str:
        return f" ({share * cpu_ms_per_session:.3f} ms)" if cpu_ms_per_session else ""

    if cpu_ms_per_session:
        lines += [f"Shares are of mailgate's {cpu_ms_per_session:.3f} ms of CPU per session in this run.", ""]
    lines += ["| own | total | function |", "|---:|---:|---|"]
    lines += [
        f"| {c.self_share:.1%}{ms(c.self_share)} | {c.total_share:.1%}{ms(c.total_share)} | `{c.name}` |"
        for c in profile.top_self
    ]
    lines += [
        "",
        "Python functions by total time (the function and everything it calls; entry frames omitted):",
        "",
    ]
    lines += ["| total | own | function |", "|---:|---:|---|"]
    lines += [
        f"| {c.total_share:.1%}{ms(c.total_share)} | {c.self_share:.1%}{ms(c.self_share)} | `{c.name}` |"
        for c in profile.top_total
    ]
    lines += ["", "Own time by area (the innermost Python frame's package or module):", ""]
    lines += ["| share | area |", "|---:|---|"]
    lines += [f"| {share:.1%}{ms(share)} | `{name}` |" for name, share in profile.by_area]
    return "\n".join(lines) + "\n"
