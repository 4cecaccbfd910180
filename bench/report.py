"""Rows as data, and BENCHMARKS.md made from them.

Each run stores its rows in ``BENCHMARKS.json`` (beside the Markdown file), merged with the rows
of earlier runs that it did not repeat, so ``make bench ROWS=3`` refreshes row 3 and keeps the
rest; every row says when and on what it was measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One benchmark: its figure beside its target, and what a reader needs to trust it."""

    number: int
    title: str
    target: str
    figure: str
    passed: bool | None  # None: measured, but the target could not be judged (say why)
    details: list[str] = field(default_factory=list)  # Markdown lines
    values: dict[str, Any] = field(default_factory=dict)  # raw numbers, for tests and reruns
    measured_at: str = ""
    command: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]

    def line(self) -> str:
        return f"row {self.number}: {self.figure} (target {self.target}) {self.verdict}"


def load(path: Path) -> dict[int, Row]:
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {int(k): Row(**v) for k, v in raw.items()}


def save(path: Path, rows: dict[int, Row]) -> None:
    data = {str(n): asdict(rows[n]) for n in sorted(rows)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _machine_lines(machine: dict[str, str]) -> list[str]:
    return [f"| {key} | {value} |" for key, value in machine.items()]


def render(rows: dict[int, Row], *, latest_machine: dict[str, str], latest_command: str) -> str:
    """The whole BENCHMARKS.md."""
    out = [
        "# Benchmarks",
        "",
        "Made by `make bench` (the code is in `bench/`; `make bench ROWS=1,3` reruns some rows",
        "and keeps the others). Each row starts its own private `redis-server`, the NanoGPT",
        "simulator on loopback, a webhook receiver and real `celery -A workers.app worker`",
        "processes; the baselines run in those same workers (`-I bench.baselines`), on the same",
        "broker, in the same run as the figure they are compared with, so the machine's noise",
        "mostly cancels in the ratios. Rows 2 and 4 also set plain Celery's ceiling beside",
        "theirs: a worker of `bench/plain_app.py` (no project code) on the same Redis, in the same",
        "run. Absolute figures move with the machine and its load.",
        "",
        "## Machine (latest run)",
        "",
        "| | |",
        "|---|---|",
        *_machine_lines(latest_machine),
        f"| command | `{latest_command}` |",
        "",
        "## Results",
        "",
        "| # | benchmark | figure | target | result |",
        "|---|---|---|---|---|",
    ]
    for n in sorted(rows):
        row = rows[n]
        out.append(f"| {n} | {row.title} | {row.figure} | {row.target} | **{row.verdict}** |")
    for n in sorted(rows):
        row = rows[n]
        out += ["", f"## {n}. {row.title}", ""]
        out.append(f"Measured {row.measured_at} in {row.seconds:.0f} s with `{row.command}`.")
        if any(latest_machine.get(k) != v for k, v in row.machine.items()):
            facts = "; ".join(f"{k}: {v}" for k, v in row.machine.items())
            out.append(f"On: {facts}.")
        out += ["", f"**{row.figure}** (target {row.target}): **{row.verdict}**", ""]
        out += row.details
    return "\n".join(out) + "\n"
