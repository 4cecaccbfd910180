"""Fixtures and the closing table of the fault-injection suite (copied into RELIABILITY.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.rig import Figures, Rig

RESULTS: list[Figures] = []


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def report() -> Iterator[list[Figures]]:
    rows: list[Figures] = []
    yield rows
    RESULTS.extend(rows)


def table() -> str:
    lines = [
        "| fault | jobs | lost | two outcomes | repeat deliveries | recovery | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in RESULTS:
        recovery = f"{f.recovery_s:.1f} s" if f.recovery_s is not None else "-"
        lines.append(
            f"| {f.fault} | {f.jobs} | {f.lost} | {f.duplicated} | {f.repeats} | "
            f"{recovery} | {f.note} |"
        )
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section("reliability figures")
        terminalreporter.write_line(table())
        out = Path(__file__).parent / "last-run.md"
        out.write_text(table() + "\n")
