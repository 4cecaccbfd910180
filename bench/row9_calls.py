"""Row 9: status calls per job on row 6's budget workload, and what any poller could do there.

The workload is row 6's, exactly (its code: ``bench/row6_budget.py``): 400 jobs submitted at
once, generation uniform 20-60 s in the simulator's first-in-first-out upstream queue with 100
generators (positions count down as the jobs ahead finish), the simulator refusing every call
past 25 per second, one worker as the Procfile runs it with ``TTS_UPSTREAM_RATE=20``. Row 9
runs row 6's ``budget`` lane with the production defaults and counts what row 6 does not: the
status calls per job (every ``GET /api/tts/status`` the simulator saw, refused ones included,
over the jobs).

The bound beside it is computed, not measured: an *oracle of the start* that knows when each
job's generation began (no poll spent on the queue) and the distribution of generation times
(20-60 s), but not the job's own, polls each job at ``lo + offset + k * gap``; for each p95 of
the lag from completion to the poll that sees it, the best (offset, gap) on a grid gives the
fewest calls. No poller without the job's own generation time does better by more than the
grid's step: with completion spread uniformly over 40 s, a lag of at most L for 95 % of jobs
needs polls at most L apart over most of the window.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import sys
from dataclasses import asdict, dataclass

from bench import row6_budget
from bench.report import Row
from bench.rig import BenchError, Stack, percentile, status_calls
from workers.simulator import Simulator

TITLE = "Status calls per job, 400 jobs of 20-60 s at once under the budget (row 6's workload)"
TARGET = "≤ 2.0 calls/job, p95 ready→webhook ≤ 4 s, none refused"
MAX_CALLS_PER_JOB = 2.0
MAX_P95_S = 4.0
STATUS_PATH = "/api/tts/status"
# The p95 lags (seconds, completion → the poll that sees it) the bound is tabulated for.
BOUND_LAGS_S = (1.0, 2.0, 3.0, 4.0, 6.0, 10.0, 14.0, 20.0, 40.0)
# The grid's step is this share of the lag: fine enough for two digits, few enough points for
# seconds of arithmetic.
GRID_STEPS_PER_LAG = 40


@dataclass(frozen=True)
class Split:
    """Where one lane's status calls went, per job (refused ones included): before the job's
    generation began, during it, and from its end on; and when the generation's polls came."""

    queued: float
    generating: float
    ended: float
    first_after_start_s: float | None  # median: generation start → the first poll after it
    gap_s: float | None  # median: between successive polls while generating (None: no two)


@dataclass
class Lane:
    label: str
    env: dict[str, str]
    calls_per_job: float = 0.0
    refused: int = 0
    p50_s: float = math.nan
    p95_s: float = math.nan
    seen_p95_s: float = math.nan  # completion → the status answer that said completed
    completed: int = 0
    wall_s: float = 0.0
    split: Split | None = None


def measure(label: str, size_name: str = "full", **env: str) -> Lane:
    """Run row 6's budget lane (with ``env`` overriding the worker's settings) and count."""
    size = row6_budget.SIZES[size_name]
    work = row6_budget.workload(size)
    lane = Lane(label, env)
    with Stack() as stack, contextlib.ExitStack() as sims:
        sim = sims.enter_context(
            Simulator(
                api_key="x",
                upstream_slots=size.slots,
                rate_limit_per_s=row6_budget.SIM_RATE_PER_S,
            )
        )
        r6 = row6_budget.Lane("budget", row6_budget.BUDGET_RATE_PER_S, sim)
        row6_budget._run_lane(stack, r6, 1, work, size, **env)
        if r6.completed < len(work):
            raise BenchError(f"{label}: {len(work) - r6.completed} jobs did not complete")
        calls = sim.calls().get(STATUS_PATH)
        lane.calls_per_job = (calls.answered + calls.refused) / len(work) if calls else 0.0
        lane.refused = r6.refused
        lane.p50_s, lane.p95_s = r6.p50, r6.p95
        lane.completed, lane.wall_s = r6.completed, r6.wall_s
        lane.seen_p95_s = percentile(_seen_lags(sim, stack, r6.jids), 95)
        lane.split = _split(sim, [stack.tally.run_ids[jid] for jid in r6.jids])
    return lane


def _split(sim: Simulator, run_ids: list[str]) -> Split:
    queued = generating = ended = 0
    firsts: list[float] = []
    gaps: list[float] = []
    for run_id in run_ids:
        start, end = sim.started_at(run_id), sim.finished_at(run_id)
        if start is None or end is None:
            continue
        polls = sorted(r.at for r in sim.status_polls(run_id))
        during = [at for at in polls if start <= at < end]
        queued += sum(1 for at in polls if at < start)
        generating += len(during)
        ended += sum(1 for at in polls if at >= end)
        after = [at for at in polls if at >= start]
        if after:
            firsts.append(after[0] - start)
        gaps.extend(b - a for a, b in itertools.pairwise(during))
    n = len(run_ids)
    return Split(
        queued / n,
        generating / n,
        ended / n,
        statistics.median(firsts) if firsts else None,
        statistics.median(gaps) if gaps else None,
    )


def _seen_lags(sim: Simulator, stack: Stack, jids: list[str]) -> list[float]:
    """Per job: from the generation's end to the status call that found it ended."""
    lags = []
    run_ids = [stack.tally.run_ids[jid] for jid in jids]
    assert status_calls(sim, run_ids)  # every job was polled at least once
    for run_id in run_ids:
        ended = sim.finished_at(run_id)
        polls = [r.at for r in sim.status_polls(run_id) if not r.limited]
        after = [at for at in polls if ended is not None and at >= ended]
        if ended is not None and after:
            lags.append(min(after) - ended)
    return lags


def bound(gens: list[float], lag_s: float) -> tuple[float, float, float] | None:
    """(calls per job, offset, gap) of the cheapest oracle-of-the-start schedule whose p95 lag
    is at most ``lag_s``; None if no grid point reaches it."""
    lo, hi = min(gens), max(gens)
    step = lag_s / GRID_STEPS_PER_LAG
    best: tuple[float, float, float] | None = None
    # Equal gaps longer than lag / 0.95 lose more than 5 % of every gap's completions; an
    # offset past the lag plus a tenth of the window loses more than 5 % at its start.
    for g in range(1, int(lag_s / 0.95 / step) + 2):
        gap = g * step
        for o in range(int(min(gap, lag_s + (hi - lo) / 10) / step) + 1):
            offset = o * step
            calls, lags = [], []
            for gen in gens:
                k = max(0, math.ceil((gen - lo - offset) / gap))
                calls.append(k + 1)
                lags.append(lo + offset + k * gap - gen)
            if percentile(lags, 95) <= lag_s + 1e-9:
                mean = statistics.mean(calls)
                if best is None or mean < best[0]:
                    best = (mean, offset, gap)
    return best


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _split_table(split: Split | None) -> list[str]:
    if split is None:
        return []
    return [
        "Where the status calls went, per job: before the generation began (queued), during it,"
        " from its end on (the poll that finds it, and any refused); when the generation's"
        " polls came (medians).",
        "",
        "| queued | generating | from the end | generation start → first poll | then every |",
        "|---|---|---|---|---|",
        f"| {split.queued:.2f} | {split.generating:.2f} | {split.ended:.2f} |"
        f" {_seconds(split.first_after_start_s)} | {_seconds(split.gap_s)} |",
        "",
    ]


def run(size_name: str) -> Row:
    size = row6_budget.SIZES[size_name]
    gens = row6_budget.workload(size)
    lane = measure("defaults", size_name)
    curve = [
        "| p95 lag, completion → the poll that sees it | oracle of the start: calls / job"
        " | its first poll after `lo` + | then every |",
        "|---|---|---|---|",
    ]
    for lag_s in BOUND_LAGS_S:
        point = bound(gens, lag_s)
        if point is not None:
            calls, offset, gap = point
            curve.append(f"| {lag_s:g} s | {calls:.2f} | {offset:g} s | {gap:g} s |")
    passed = (
        lane.calls_per_job <= MAX_CALLS_PER_JOB and lane.p95_s <= MAX_P95_S and lane.refused == 0
    )
    details = [
        f"Row 6's workload and budget lane: {size.jobs} jobs at once, generation"
        f" {size.gen_s[0]:g}-{size.gen_s[1]:g} s, {size.slots} upstream generators, the simulator"
        f" refusing past {row6_budget.SIM_RATE_PER_S:g} calls/s, one worker (prefork × 8),"
        f" `TTS_UPSTREAM_RATE={row6_budget.BUDGET_RATE_PER_S:g}`, production defaults.",
        "",
        "| status calls / job | refused | completed | ready→webhook p50 | p95 |"
        " completion→status seen p95 | wall |",
        "|---|---|---|---|---|---|---|",
        f"| {lane.calls_per_job:.2f} | {lane.refused} | {lane.completed}/{size.jobs} |"
        f" {lane.p50_s:.2f} s | {lane.p95_s:.2f} s | {lane.seen_p95_s:.2f} s |"
        f" {lane.wall_s:.0f} s |",
        "",
        *_split_table(lane.split),
        "What any poller could do on these generation times (computed, see the module"
        " docstring): the fewest calls per job for each p95 lag, by a poller that knows when"
        " each generation began and spends nothing on the queue. Ready→webhook adds the"
        " download and the webhook to the lag.",
        "",
        *curve,
    ]
    return Row(
        number=9,
        title=TITLE,
        target=TARGET,
        figure=(
            f"{lane.calls_per_job:.2f} status calls/job, p95 ready→webhook {lane.p95_s:.1f} s"
            f" (p50 {lane.p50_s:.1f} s), {lane.refused} refused, {lane.completed}/{size.jobs}"
            " completed"
        ),
        passed=passed if size_name == "full" else None,
        details=details,
        values={
            "calls_per_job": lane.calls_per_job,
            "refused": lane.refused,
            "p50_s": lane.p50_s,
            "p95_s": lane.p95_s,
            "seen_p95_s": lane.seen_p95_s,
            "wall_s": lane.wall_s,
            "split": asdict(lane.split) if lane.split else None,
        },
    )


def curve(intervals_s: list[float]) -> None:
    """Row 9's lane at other ``TTS_POLL_INTERVAL`` values, one line each (the trade-off of
    calls per job against p95): ``python -m bench.row9_calls 5 10``."""
    for interval_s in intervals_s:
        lane = measure(f"interval {interval_s:g}", TTS_POLL_INTERVAL=repr(interval_s))
        print(
            f"TTS_POLL_INTERVAL={interval_s:g}: {lane.calls_per_job:.2f} status calls/job,"
            f" p95 ready→webhook {lane.p95_s:.2f} s (p50 {lane.p50_s:.2f} s), completion→status"
            f" seen p95 {lane.seen_p95_s:.2f} s, {lane.refused} refused, wall {lane.wall_s:.0f} s",
            *([f"({lane.split})"] if lane.split else []),
            flush=True,
        )


if __name__ == "__main__":
    curve([float(arg) for arg in sys.argv[1:]])
