"""docs/benchmarks.md: how the benchmark works, the table of the run that wrote it, targets, profile."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mailbench import profile
from mailbench.environment import EQUAL_PROXY_BUFFER, WORKERS
from mailbench.report import Row, markdown_table, target_summary

# How the benchmark works: static text, with the configuration's constants filled in.
METHOD = (
    (Path(__file__).with_name("method.md").read_text())
    .replace("{WORKERS}", str(WORKERS))
    .replace("{EQUAL_PROXY_BUFFER}", EQUAL_PROXY_BUFFER)
)


def mailgate_cpu_per_session(rows: list[Row], key: str) -> float | None:
    """mailgate's measured CPU per session in the table row of scenario `key`, if the table has it."""
    found = [row.mailgate.cpu_per_op_ms for row in rows if row.scenario.key == key]
    return found[0] if found and found[0] > 0 else None


def render(
    *,
    rows: list[Row],
    profiles: list[profile.Profile],
    facts: dict[str, str],
    args: argparse.Namespace,
    command: str,
    charted: bool,
    log_sizes: dict[str, int],
) -> str:
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
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}: {args.rounds} rounds of {args.seconds:g} s "
        f"per scenario and server, bulk {args.bulk_sessions} x {args.fetch_mib} MiB, {args.idle} idle "
        "connections.",
        "",
    ]
    parts += [f"- {name}: {value}" for name, value in facts.items()]
    parts += ["", markdown_table(rows), ""]
    if charted:
        parts += ["![mailgate / nginx ratios](benchmarks.png)", ""]
    parts += ["## Targets", "", *target_summary(rows), ""]
    parts += [
        f"Log bytes written during the run: {', '.join(f'{k} {v}' for k, v in log_sizes.items())}.",
        "",
    ]
    if profiles:
        parts += ["## Where mailgate's time goes (py-spy)", ""]
        parts += [
            "py-spy sampled mailgate's workers (`--subprocesses --nonblocking`, busy threads only) while",
            "the load generator ran the scenario. C time (libssl, uvloop) is charged to the innermost",
            "Python frame.",
            "",
        ]
        for found in profiles:
            cost = mailgate_cpu_per_session(rows, found.key)
            parts += [f"### {found.scenario} ({found.key})", "", profile.markdown(found, cost)]
    return "\n".join(parts).rstrip() + "\n"
