"""``make bench`` at a miniature size, so the harness cannot rot unnoticed.

Every row runs for real (private Redis, simulator, real worker processes, the RabbitMQ case when
a RabbitMQ answers); only the sizes shrink. Figures are not judged here (no timed assertions):
the test checks that each row measured what it set out to and wrote it down.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PIPES: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


def finite_numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in finite_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in finite_numbers(v)]
    return []


# The rows in three groups, each in its own process at once: one after another they took 161 s,
# mostly waiting on their workers (30 % of a core), the longest single test of ``make test``.
# Each row starts its own Redis, simulator and workers (and RabbitMQ vhost), so groups share
# nothing; their figures are not judged here, so running beside each other changes no check.
GROUPS = ("11,7,1,8", "10,2,3,5", "6,9,4")


def test_every_row_runs_at_miniature_size(tmp_path: Path) -> None:
    runs = []
    for number, group in enumerate(GROUPS):
        out = tmp_path / str(number) / "BENCHMARKS.md"
        out.parent.mkdir()
        command = [sys.executable, "-m", "bench", "--size", "mini", "--rows", group, "--out"]
        runs.append((out, subprocess.Popen([*command, str(out)], cwd=REPO, **PIPES)))
    try:  # every group's output first, so a failing group does not leave the others running
        done = [(out, *run.communicate(timeout=240), run.returncode) for out, run in runs]
    finally:
        for _, run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    rows: dict[str, dict[str, Any]] = {}
    for out, stdout, stderr, returncode in done:
        assert returncode == 0, stdout + stderr
        group_rows = json.loads(out.with_suffix(".json").read_text())
        text = out.read_text()
        for number, row in group_rows.items():
            assert f"| {number} | {row['title']} | {row['figure']} |" in text
        rows |= group_rows
    assert sorted(rows, key=int) == [str(n) for n in range(1, 12)]
    for number, row in rows.items():
        assert row["figure"], number
        numbers = finite_numbers(row["values"])
        assert numbers, number
        assert all(math.isfinite(n) for n in numbers), (number, row["values"])
    # Each row saw its work done: every job of row 1 was timed, row 2 counted polls, ...
    assert rows["1"]["values"]["blocking_s"] > 0
    assert rows["1"]["values"]["project_calls_per_job"] >= 1  # at least the completed answer
    assert all(p["polls_per_s"] > 0 for p in rows["2"]["values"]["phases"])
    # The upstream budget is off where the worker's own overhead is measured.
    assert rows["2"]["values"]["upstream_rate"] == rows["4"]["values"]["upstream_rate"] == "0"
    # Plain Celery drained its backlog beside rows 2 and 4, before and after.
    row2, row4 = rows["2"]["values"], rows["4"]["values"]
    assert row2["plain_noops_per_s_before"] > 0
    assert row2["plain_noops_per_s_after"] > 0
    assert row4["plain_chains_per_s_before"] > 0
    assert row4["plain_chains_per_s_after"] > 0
    # Row 7 parked its polls, found the lost step and ticked its releasers.
    assert rows["7"]["values"]["lost_delay_s"] is not None
    assert rows["7"]["values"]["releaser_ticks"] > 0
    # Row 3: every waiting poll parked in Redis, none held by a worker, on each broker measured.
    cases = rows["3"]["values"]
    assert "redis" in cases
    for case in cases.values():
        assert case["parked"] >= 150
        assert case["held_by_worker"] == 0
    assert rows["4"]["values"]["jobs_per_s"] > 0
    lanes = rows["5"]["values"].get("lanes")
    assert rows["5"]["values"]["vs_fixed3"] > 0
    assert lanes is None or all(lane["calls_per_job"] >= 1 for lane in lanes)
