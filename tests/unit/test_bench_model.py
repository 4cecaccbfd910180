"""The benchmarks' pure parts: the schedule model of row 5, percentiles, the report file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report, schedule_model
from bench.rig import BenchError, percentile
from tasks.pacing import schedule


def test_fixed_interval_polls_every_interval_and_sees_completion_within_one() -> None:
    interval_s = 2.0
    result = schedule_model.replay(
        [(0.0, 10.0)], slots=1, interval_s=interval_s, max_interval_s=interval_s
    )
    longest_s = interval_s * (1 + schedule.JITTER)
    shortest_s = interval_s * (1 - schedule.JITTER)
    (calls,) = result.calls
    assert 1 + int(10.0 // longest_s) <= calls <= 2 + int(10.0 // shortest_s)
    (latency_s,) = result.latencies_s
    assert 0.0 <= latency_s < longest_s


def test_replay_is_deterministic_for_a_seed_and_covers_every_job() -> None:
    work = [(0.0, 5.0), (0.0, 3.0), (1.0, 8.0), (2.5, 1.0)]
    first = schedule_model.replay(work, 2, interval_s=3, max_interval_s=30, seed=7)
    again = schedule_model.replay(work, 2, interval_s=3, max_interval_s=30, seed=7)
    assert first == again
    assert len(first.calls) == len(first.latencies_s) == len(work)
    assert all(c >= 1 for c in first.calls)
    assert all(lat >= 0 for lat in first.latencies_s)


def test_a_job_done_before_its_first_poll_costs_one_call() -> None:
    result = schedule_model.replay([(5.0, 0.0)], 1, interval_s=3, max_interval_s=30)
    assert result.calls == [1]
    # The first poll comes one interval (less jitter) after the submit.
    (latency_s,) = result.latencies_s
    assert 3 * (1 - schedule.JITTER) <= latency_s <= 3


def test_queued_share_counts_the_wait_for_a_generator() -> None:
    waiting_s, generating_s = schedule_model.queued_share([(0.0, 4.0), (0.0, 2.0)], 1)
    assert (waiting_s, generating_s) == (2.0, 3.0)  # the second waits 4 s, the first none


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    with pytest.raises(BenchError):
        percentile([], 95)


def test_report_keeps_earlier_rows_and_renders_each_beside_its_target(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.json"
    one = report.Row(1, "first", "≥ 8x", "9.0x", True, ["detail"], {"x": 1.0})
    two = report.Row(2, "second", "≥ 0.5", "0.4", False)
    report.save(path, {1: one})
    rows = report.load(path)
    rows[2] = two
    report.save(path, rows)
    assert report.load(path) == {1: one, 2: two}
    text = report.render(report.load(path), latest_machine={"CPU": "x"}, latest_command="make")
    assert "| 1 | first | 9.0x | ≥ 8x | **PASS** |" in text
    assert "| 2 | second | 0.4 | ≥ 0.5 | **FAIL** |" in text
    assert "detail" in text
