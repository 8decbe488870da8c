"""docs/benchmarks.md: how the benchmark works, the table of the run that wrote it, targets, profile."""

from __future__ import annotations

from pathlib import Path

from mailbench import native, profile
from mailbench.environment import EQUAL_PROXY_BUFFER, WORKERS
from mailbench.record import RunRecord
from mailbench.report import Row, markdown_table, target_summary

# How the benchmark works: static text, with the configuration's constants filled in.
# What the last real run showed and what to do about it: written by hand after that run.
FINDINGS = Path(__file__).with_name("findings.md").read_text()
METHOD = (
    (Path(__file__).with_name("method.md").read_text())
    .replace("{WORKERS}", str(WORKERS))
    .replace("{EQUAL_PROXY_BUFFER}", EQUAL_PROXY_BUFFER)
)


def mailgate_cpu_per_session(rows: list[Row], key: str) -> float | None:
    """mailgate's measured CPU per session in the table row of scenario `key`, if the table has it."""
    found = [row.mailgate.cpu_per_op_ms for row in rows if row.scenario.key == key]
    return found[0] if found and found[0] > 0 else None


def render(record: RunRecord, charted: bool) -> str:
    settings = record.settings
    parts = [
        "# Benchmarks: mailgate against nginx, side by side",
        "",
        "Regenerate this page (table, target list, chart and profile) with one command, as root:",
        "",
        "    bench/run --docs",
        "",
        "`bench/run --quick` is a short development run; `bench/run --help` lists the options.",
        "",
        METHOD,
        "## The last run",
        "",
        f"`{record.command}` on {record.when}: {settings['rounds']} rounds of {settings['seconds']:g} s per "
        f"scenario and server, bulk {settings['bulk_sessions']} x {settings['fetch_mib']} MiB, "
        f"{settings['idle']} idle connections.",
        "",
    ]
    parts += [f"- {name}: {value}" for name, value in record.facts.items()]
    parts += ["", markdown_table(record.rows), ""]
    if charted:
        parts += ["![mailgate / nginx ratios](benchmarks.png)", ""]
    parts += ["## Targets", "", *target_summary(record.rows), ""]
    sizes = ", ".join(f"{name} {size}" for name, size in record.log_sizes.items())
    parts += [f"Log bytes written during the run: {sizes}.", ""]
    if FINDINGS.strip():
        parts += [FINDINGS, ""]
    if record.native:
        parts += ["## Where each server's CPU goes, by native library (perf)", ""]
        parts += [
            "perf sampled all processes of one server at a time while the load generator ran the scenario",
            "(the same load as a table run); each sample is charged to the shared object it was in, and the",
            "shares are turned into milliseconds with the CPU per session measured in that run.",
            "",
        ]
        for split in record.native:
            parts += [f"### {split.scenario} ({split.key})", "", native.markdown(split)]
    if record.profiles:
        parts += ["## Where mailgate's time goes (py-spy)", ""]
        parts += [
            "py-spy sampled mailgate's workers (`--subprocesses --nonblocking`) while the load generator ran",
            "the scenario. A sample is charged to the innermost Python frame, C code it calls included:",
            "`Runner.run` is the event loop itself: uvloop's code and mailgate's C layer (`mailgate/_io.c`:",
            "sockets, TLS, the relay, the front of sessions) with the libssl and system calls it makes. The",
            "table's kernel column gives the kernel's share of each session.",
            "",
        ]
        for found in record.profiles:
            cost = mailgate_cpu_per_session(record.rows, found.key)
            parts += [f"### {found.scenario} ({found.key})", "", profile.markdown(found, cost)]
    return "\n".join(parts).rstrip() + "\n"
