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
    scenario: str
    samples: int
    top_self: list[FunctionCost]
    top_total: list[FunctionCost]
    by_area: list[tuple[str, float]]  # share of busy samples per mailgate package or library (leaf frame)


def py_spy_binary(venv_bin: Path) -> str | None:
    candidate = venv_bin / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start(py_spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Record `pid` and its children (the workers) for `seconds`, only samples where a thread is busy."""
    argv = [
        py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", "250",
        "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path})"


def _area(frame: str) -> str:
    """Where the time goes: a mailgate package, a library, or the standard library."""
    name = _short(frame)
    inside = name[name.rfind("(") + 1 : -1]
    if inside.startswith("mailgate/"):
        return "/".join(inside.split("/")[:2])
    if "/" in inside:
        return inside.split("/")[0]
    return inside or name


def summarize(raw: Path, scenario: str, top: int = 15) -> Profile:
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
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        self_counts[_short(leaf)] += count
        area_counts[_area(leaf)] += count
        for name in {_short(f) for f in frames}:
            total_counts[name] += count
    if not samples:
        return Profile(scenario, 0, [], [], [])

    def costs(counter: Counter[str]) -> list[FunctionCost]:
        return [
            FunctionCost(name, self_counts[name] / samples, total_counts[name] / samples)
            for name, _ in counter.most_common(top)
        ]

    areas = [(name, count / samples) for name, count in area_counts.most_common(top)]
    return Profile(scenario, samples, costs(self_counts), costs(total_counts), areas)


def markdown(profile: Profile) -> str:
    if not profile.samples:
        return f"No samples for {profile.scenario} (py-spy missing or not permitted).\n"
    lines = [f"{profile.samples} busy samples over the workers, at 250 Hz.", ""]
    lines += ["Top frames by own time:", ""]
    lines += ["| own | total | function |", "|---:|---:|---|"]
    lines += [f"| {c.self_share:.1%} | {c.total_share:.1%} | `{c.name}` |" for c in profile.top_self]
    lines += ["", "Top frames by total time (the function and what it calls):", ""]
    lines += ["| total | own | function |", "|---:|---:|---|"]
    lines += [f"| {c.total_share:.1%} | {c.self_share:.1%} | `{c.name}` |" for c in profile.top_total]
    lines += ["", "Own time by area (the file of the innermost Python frame):", ""]
    lines += ["| share | area |", "|---:|---|"]
    lines += [f"| {share:.1%} | `{name}` |" for name, share in profile.by_area]
    return "\n".join(lines) + "\n"
