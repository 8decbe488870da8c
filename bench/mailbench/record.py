"""One benchmark run as saved in bench/results/results.json (and docs-run.json for the run the docs show),
so the docs can be rendered again from it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailbench.native import NativeSplit
from mailbench.profile import FunctionCost, Profile
from mailbench.report import Row, Side
from mailbench.scenarios import Scenario


@dataclass
class RunRecord:
    command: str
    when: str
    settings: dict[str, Any]  # the command-line options
    facts: dict[str, str]  # machine, versions, process counts
    rows: list[Row]
    profiles: list[Profile]
    log_sizes: dict[str, int]
    native: list[NativeSplit] = dataclasses.field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())

        def row(saved: dict[str, Any]) -> Row:
            scenario = dict(saved["scenario"])
            scenario["options"] = tuple(scenario["options"])
            scenario["targets"] = tuple(scenario["targets"])
            return Row(Scenario(**scenario), Side(**saved["nginx"]), Side(**saved["mailgate"]))

        def profile(saved: dict[str, Any]) -> Profile:
            return Profile(
                key=saved["key"],
                scenario=saved["scenario"],
                samples=saved["samples"],
                top_self=[FunctionCost(**cost) for cost in saved["top_self"]],
                top_total=[FunctionCost(**cost) for cost in saved["top_total"]],
                by_area=[(name, share) for name, share in saved["by_area"]],
            )

        return cls(
            command=data["command"],
            when=data["when"],
            settings=data["settings"],
            facts=data["facts"],
            rows=[row(saved) for saved in data["rows"]],
            profiles=[profile(saved) for saved in data["profiles"]],
            log_sizes=data["log_sizes"],
            native=[NativeSplit(**saved) for saved in data.get("native", [])],
        )
