"""Where each server's CPU goes by native library, with `perf`: the same scenario run against nginx and
mailgate while perf samples all their processes, each sample charged to the shared object it was in.

py-spy (profile.py) says which Python code mailgate runs; this says how much of a session is work both
servers must do (TLS in libcrypto and libssl, the kernel's TCP) and how much is the layer around it (the
Python interpreter and the event loop for mailgate, nginx's own code for nginx).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

FREQUENCY = 999  # Hz: an odd rate, not in step with timers

# Groups of shared objects, in the order the table shows them: (title, test on the object's file name).
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("TLS: libcrypto, libssl", re.compile(r"^(libcrypto|libssl)\.so")),
    ("kernel (system calls, loopback TCP)", re.compile(r"^\[kernel")),
    ("libc (malloc, memcpy, system call stubs)", re.compile(r"^libc\.so|^\[vdso\]")),
    ("nginx's own code", re.compile(r"^nginx$|^ngx_.*\.so$")),
    # Debian's python3.11 has the interpreter linked into the executable; pyenv's builds load libpython.
    ("Python interpreter (libpython)", re.compile(r"^libpython|^python3(\.\d+)?$")),
    ("event loop (uvloop, libuv)", re.compile(r"^loop\.cpython")),
    ("mailgate's C layer (_io: sockets, TLS calls, relay)", re.compile(r"^_io\.cpython")),
    ("CPython extension modules (_ssl, _asyncio, _socket, ctypes, libffi)", re.compile(r"cpython|^libffi")),
]
OTHER = "other"


@dataclass(frozen=True)
class NativeSplit:
    key: str  # the scenario's key
    scenario: str
    cpu_ms: dict[str, float]  # per server: CPU per session during the sampled run
    shares: dict[str, dict[str, float]]  # per server: group title -> share of its samples
    samples: dict[str, int]


def perf_binary() -> str | None:
    return shutil.which("perf")


def start(perf: str, pids: list[int], output: Path) -> subprocess.Popen[bytes]:
    """Sample `pids` (a server's master and workers) until `stop`."""
    argv = [perf, "record", "-F", str(FREQUENCY), "-p", ",".join(map(str, pids)), "-o", str(output)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(recorder: subprocess.Popen[bytes]) -> str:
    """End the recording (perf writes its file on SIGINT); its error output."""
    recorder.send_signal(signal.SIGINT)
    _, errors = recorder.communicate(timeout=120)
    return errors.decode(errors="replace")


# "    38.56%          4312  libpython3.11.so.1.0" in `perf report --sort dso --stdio -n`.
_LINE = re.compile(r"^\s*(?P<percent>\d+\.\d+)%\s+(?P<samples>\d+)\s+(?P<dso>\S.*?)\s*$")


def group_of(dso: str) -> str:
    name = dso.rsplit("/", 1)[-1]
    for title, pattern in GROUPS:
        if pattern.search(name):
            return title
    return OTHER


def shares(perf: str, data: Path) -> tuple[dict[str, float], int]:
    """Share of samples per group, and the number of samples, of one recording."""
    done = subprocess.run(
        [perf, "report", "-i", str(data), "--stdio", "-n", "--sort", "dso", "--no-children", "-g", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found: dict[str, float] = {}
    samples = 0
    for line in done.stdout.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        samples += int(match["samples"])
        group = group_of(match["dso"])
        found[group] = found.get(group, 0.0) + float(match["percent"]) / 100
    return found, samples


def markdown(split: NativeSplit) -> str:
    """One table: per group, milliseconds of CPU per session of each server, and the difference."""
    servers = list(split.cpu_ms)
    header = " | ".join(f"{name} ms/session" for name in servers)
    lines = [
        f"CPU per session while perf sampled ({FREQUENCY} Hz): "
        + ", ".join(f"{name} {split.cpu_ms[name]:.3f} ms ({split.samples[name]} samples)" for name in servers)
        + ".",
        "",
        f"| where | {header} | mailgate - nginx |",
        "|---|" + "---:|" * (len(servers) + 1),
    ]
    titles = [title for title, _ in GROUPS] + [OTHER]
    for title in titles:
        values = {name: split.shares[name].get(title, 0.0) * split.cpu_ms[name] for name in servers}
        if all(value < 0.0005 for value in values.values()):
            continue
        cells = " | ".join(f"{values[name]:.3f}" for name in servers)
        difference = values.get("mailgate", 0.0) - values.get("nginx", 0.0)
        lines.append(f"| {title} | {cells} | {difference:+.3f} |")
    total = " | ".join(f"**{split.cpu_ms[name]:.3f}**" for name in servers)
    difference = split.cpu_ms.get("mailgate", 0.0) - split.cpu_ms.get("nginx", 0.0)
    lines.append(f"| **all** | {total} | **{difference:+.3f}** |")
    return "\n".join(lines) + "\n"
