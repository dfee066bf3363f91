"""Results: each figure with the baseline it is compared to, measured in the same run."""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    phase: str
    system: str
    metric: str
    value: float
    unit: str
    baseline: str | None = None  # "system/metric" of the same phase
    higher_is_better: bool = True
    ratio: float | None = None


class Report:
    def __init__(self, mode: str, settings: dict[str, Any]) -> None:
        self.mode = mode
        self.settings = settings
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(
        self,
        phase: str,
        system: str,
        metric: str,
        value: float,
        unit: str,
        baseline: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        self.rows.append(Row(phase, system, metric, value, unit, baseline, higher_is_better))
        print(f"  {phase:10} {system:22} {metric:28} {value:12.2f} {unit}", flush=True)

    def _ratios(self) -> None:
        index = {(r.phase, f"{r.system}/{r.metric}"): r for r in self.rows}
        for r in self.rows:
            if r.baseline and (r.phase, r.baseline) in index:
                base = index[(r.phase, r.baseline)].value
                if base and r.value:
                    r.ratio = r.value / base if r.higher_is_better else base / r.value

    def write(self, out: Path) -> Path:
        self._ratios()
        out.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        lines = [
            f"# Benchmark ({self.mode}) {stamp}",
            "",
            f"Machine: {platform.machine()}, {platform.processor() or ''} "
            f"Python {platform.python_version()}; PostgreSQL settings: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items())),
            "",
            "Ratio: ours / baseline for rates, baseline / ours for latencies and costs "
            "(above 1 is better than the baseline), both measured in this run.",
            "",
            "| phase | system | metric | value | unit | baseline | ratio |",
            "|---|---|---|---:|---|---|---:|",
        ]
        for r in self.rows:
            ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
            lines.append(
                f"| {r.phase} | {r.system} | {r.metric} | {r.value:.2f} | {r.unit} | "
                f"{r.baseline or ''} | {ratio} |"
            )
        lines += ["", *[f"- {n}" for n in self.notes]]
        md = "\n".join(lines) + "\n"
        path = out / f"{stamp}-{self.mode}.md"
        path.write_text(md)
        (out / f"{stamp}-{self.mode}.json").write_text(
            json.dumps(
                {
                    "mode": self.mode,
                    "settings": self.settings,
                    "notes": self.notes,
                    "rows": [asdict(r) for r in self.rows],
                },
                indent=2,
            )
        )
        print("\n" + md)
        return path
