"""Rounds aggregated into rows, the targets checked, and the table and chart written."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from mailbench.scenarios import Measurement, Scenario

# Target name -> (what is compared, the bound on mailgate / nginx, ">=" or "<=").
TARGETS: dict[str, tuple[str, float, str]] = {
    "rate": ("rate", 0.9, ">="),
    "cpu": ("CPU per session", 1.3, "<="),
    "p50": ("p50 latency", 0.1, "<="),
    "bulk-default": ("throughput", 1.5, ">="),
    "bulk-equal": ("throughput", 1.0, ">="),
    "memory": ("memory per connection", 1.5, "<="),
}


@dataclass
class Side:
    """One server's numbers for one scenario: medians over the rounds, CPU summed over them."""

    rate: float
    p50_ms: float
    p99_ms: float
    cpu_per_op_ms: float
    system_per_op_ms: float  # the kernel's part of cpu_per_op_ms
    memory_kib: float
    sessions: int
    errors: int
    resumed: int
    client_cpu: float
    server_cpu: float

    @classmethod
    def of(cls, runs: list[Measurement]) -> Side:
        sessions = sum(m.sessions for m in runs)
        server_cpu = sum(m.server_cpu for m in runs)
        return cls(
            rate=statistics.median(m.rate for m in runs),
            p50_ms=statistics.median(m.p50_ms for m in runs),
            p99_ms=statistics.median(m.p99_ms for m in runs),
            cpu_per_op_ms=1000.0 * server_cpu / sessions if sessions else 0.0,
            system_per_op_ms=1000.0 * sum(m.server_system for m in runs) / sessions if sessions else 0.0,
            memory_kib=statistics.median(m.memory_kib for m in runs),
            sessions=sessions,
            errors=sum(m.errors for m in runs),
            resumed=sum(m.resumed for m in runs),
            client_cpu=sum(m.client_cpu for m in runs),
            server_cpu=server_cpu,
        )

    @property
    def generator_heavier(self) -> bool:
        """The load generator cost more CPU than the server it drove: the row measures the generator."""
        return self.client_cpu > self.server_cpu


@dataclass
class Row:
    scenario: Scenario
    nginx: Side
    mailgate: Side

    def _ratio(self, ours: float, theirs: float) -> float | None:
        if not (self.nginx.sessions and self.mailgate.sessions and theirs):
            return None  # a side that completed nothing has no rate, latency or cost to compare
        return ours / theirs

    @property
    def rate_ratio(self) -> float | None:
        return self._ratio(self.mailgate.rate, self.nginx.rate)

    @property
    def p50_ratio(self) -> float | None:
        return self._ratio(self.mailgate.p50_ms, self.nginx.p50_ms)

    @property
    def cpu_ratio(self) -> float | None:
        return self._ratio(self.mailgate.cpu_per_op_ms, self.nginx.cpu_per_op_ms)

    @property
    def memory_ratio(self) -> float | None:
        return self._ratio(self.mailgate.memory_kib, self.nginx.memory_kib)

    def ratio_for(self, target: str) -> float | None:
        if target in ("rate", "bulk-default", "bulk-equal"):
            return self.rate_ratio
        if target == "cpu":
            return self.cpu_ratio
        if target == "p50":
            return self.p50_ratio
        return self.memory_ratio

    def verdicts(self) -> list[tuple[str, float | None, bool]]:
        """(target text, ratio, met) for each target of the row."""
        found = []
        for target in self.scenario.targets:
            what, bound, sense = TARGETS[target]
            ratio = self.ratio_for(target)
            met = ratio is not None and (ratio >= bound if sense == ">=" else ratio <= bound)
            found.append((f"{what} {sense} {bound:g}", ratio, met))
        return found


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rate(row: Row, side: Side) -> str:
    if row.scenario.kind == "bulk":
        return f"{side.rate:.0f} MB/s"
    if row.scenario.kind == "idle":
        return f"{side.memory_kib:.1f} KiB"
    return f"{side.rate:.0f}/s"


def _notes(row: Row) -> str:
    notes = []
    for side in (row.nginx, row.mailgate):
        name = "nginx" if side is row.nginx else "mailgate"
        if side.generator_heavier and row.scenario.kind == "rate":
            notes.append(f"generator CPU > {name}'s")
        if side.errors:
            notes.append(f"{name}: {side.errors} errors")
        if "-r" in row.scenario.options and side.sessions:
            notes.append(f"{name} resumed {100.0 * side.resumed / side.sessions:.0f}%")
    for text, ratio, met in row.verdicts():
        notes.append(f"{'MET' if met else 'MISSED'}: {text} ({_f(ratio)})")
    return "; ".join(notes)


HEADER = (
    "scenario",
    "ACK",
    "nginx",
    "mailgate",
    "ratio",
    "p50 ms n / m",
    "p99 ms n / m",
    "p50 ratio",
    "CPU ms/op n / m",
    "of which kernel n / m",
    "CPU ratio",
    "notes",
)


def table_cells(rows: list[Row]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for row in rows:
        n, m = row.nginx, row.mailgate
        latency = row.scenario.kind == "rate"
        first_ratio = row.memory_ratio if row.scenario.kind == "idle" else row.rate_ratio
        cells.append(
            (
                row.scenario.title,
                row.scenario.ack,
                _rate(row, n),
                _rate(row, m),
                _f(first_ratio),
                f"{n.p50_ms:.2f} / {m.p50_ms:.2f}" if latency else "",
                f"{n.p99_ms:.2f} / {m.p99_ms:.2f}" if latency else "",
                _f(row.p50_ratio) if latency else "",
                f"{n.cpu_per_op_ms:.3f} / {m.cpu_per_op_ms:.3f}" if row.scenario.kind != "idle" else "",
                f"{n.system_per_op_ms:.3f} / {m.system_per_op_ms:.3f}" if row.scenario.kind != "idle" else "",
                _f(row.cpu_ratio) if row.scenario.kind != "idle" else "",
                _notes(row),
            )
        )
    return cells


def text_table(rows: list[Row]) -> str:
    cells: list[tuple[str, ...]] = [HEADER, *table_cells(rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER) - 1)]
    lines = []
    for line in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1])
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in table_cells(rows)
    ]
    return "\n".join(lines)


def target_summary(rows: list[Row]) -> list[str]:
    found = []
    for row in rows:
        for text, ratio, met in row.verdicts():
            ack = f", {row.scenario.ack} ACK" if row.scenario.ack else ""
            found.append(
                f"- {'met' if met else '**missed**'}: {row.scenario.title}{ack}: {text}: {_f(ratio)}"
            )
    return found


def chart(rows: list[Row], path: Path) -> bool:
    """A bar chart of the ratios per scenario (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, values, colors, bounds = [], [], [], []
    for row in rows:
        for target in row.scenario.targets:
            ratio = row.ratio_for(target)
            if ratio is None:
                continue
            what, bound, sense = TARGETS[target]
            ack = f" ({row.scenario.ack} ACK)" if row.scenario.ack else ""
            labels.append(f"{row.scenario.title}{ack}: {what} ({sense} {bound:g})")
            values.append(ratio)
            bounds.append(bound)
            met = ratio >= bound if sense == ">=" else ratio <= bound
            colors.append("#3a7d44" if met else "#c0392b")
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    figure, axes = plt.subplots(figsize=(11, 0.3 * len(labels) + 1.6))
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, values, color=colors)
    axes.scatter(bounds, positions, marker="|", s=220, color="black", zorder=3, label="target")
    axes.set_yticks(positions, labels, fontsize=7)
    axes.axvline(1.0, color="grey", linewidth=0.8)
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]))
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlim(min([*values, *bounds, 0.5]) / 1.5, max([*values, *bounds, 2.0]) * 1.6)
    axes.legend(loc="lower right", fontsize=7)
    axes.set_xlabel("mailgate / nginx (log scale; green: target met, red: missed; black tick: the target)")
    axes.set_title("mailgate vs nginx, same machine, same run")
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value:.2f}", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return True
