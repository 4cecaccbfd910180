"""The closing table of the fault-injection suite (copied into RELIABILITY.md): a pytest plugin
loaded by tests/conftest.py, so it runs where the terminal is.

A test's rows travel in its report (``user_properties``), not in a module list: under
pytest-xdist the rows are made in a worker process and the table is printed by the controller.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.reliability.rig import Figures

#: The ``user_properties`` name a reliability row travels under.
ROW = "reliability-row"
RESULTS: list[Figures] = []


def add_rows(item: pytest.Item, rows: list[Figures]) -> None:
    """Attach ``rows`` to ``item``'s report (call before its teardown report is made)."""
    item.user_properties.extend((ROW, dataclasses.asdict(row)) for row in rows)


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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        RESULTS.extend(Figures(**value) for name, value in report.user_properties if name == ROW)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return  # an xdist worker: the controller prints and writes the whole table
    if RESULTS:
        terminalreporter.section("reliability figures")
        terminalreporter.write_line(table())
        out = Path(__file__).parent / "last-run.md"
        out.write_text(table() + "\n")
