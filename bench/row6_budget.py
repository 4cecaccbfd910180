"""Row 6: one worker, 400 jobs at once, against a NanoGPT that refuses calls past 25 per second.

The workload (fixed random seed): ``jobs`` TTS jobs submitted at the same moment, each
generating 20-60 s in the simulator's shared upstream queue (``gen_s``, ``slots`` generators,
first in first out), so queue positions count down as the jobs ahead finish. The simulator
refuses every ``/api/*`` call beyond 25 in any second with ``429`` and ``Retry-After: 1``, as
NanoGPT's account-wide limit does.

Two lanes run one after the other, each with its own simulator, Redis database and one worker
as the Procfile runs it (prefork × 8), with the production defaults otherwise:

* ``budget``: ``TTS_UPSTREAM_RATE=20`` (the default): the fleet's budget and polls chosen by
  their chance of finding audio;
* ``no budget``: ``TTS_UPSTREAM_RATE=0``: every call made when its step runs, 429s retried with
  backoff, as before issue 15.

Per lane: calls answered and refused by the simulator (submit and status), jobs completed, and
the time from each job's completion upstream to its webhook at the receiver (p50, p95).
Targets: at most 1 % of calls refused, every job completed, p95 at most 12 s.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field

from bench.report import Row
from bench.rig import ELEVEN, BenchError, Caller, Stack, directive, percentile
from tasks import names
from workers.simulator import Simulator

TITLE = "One worker, 400 jobs at once, NanoGPT refusing past 25 calls/s: refused, completed, p95"
TARGET = "≤ 1 % refused, all completed, p95 ≤ 12 s"
MAX_REFUSED_SHARE = 0.01
MAX_P95_S = 12.0
SIM_RATE_PER_S = 25.0  # NanoGPT's documented limit per account
BUDGET_RATE_PER_S = 20.0  # TTS_UPSTREAM_RATE's default


@dataclass(frozen=True)
class Size:
    jobs: int
    slots: int
    gen_s: tuple[float, float]
    seed: int = 6


SIZES = {
    "full": Size(jobs=400, slots=100, gen_s=(20.0, 60.0)),
    "mini": Size(jobs=30, slots=10, gen_s=(1.0, 3.0)),
}


@dataclass
class Lane:
    label: str
    rate_per_s: float
    sim: Simulator
    jids: list[str] = field(default_factory=list)
    answered: int = 0
    refused: int = 0
    completed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def refused_share(self) -> float:
        total = self.answered + self.refused
        return self.refused / total if total else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else float("nan")

    @property
    def p95(self) -> float:
        return percentile(self.latencies_s, 95) if self.latencies_s else float("nan")


def workload(size: Size) -> list[float]:
    rng = random.Random(size.seed)
    return [rng.uniform(*size.gen_s) for _ in range(size.jobs)]


def _run_lane(
    stack: Stack, lane: Lane, db: int, work: list[float], size: Size, **env_overrides: str
) -> None:
    """Run ``work`` through one worker on database ``db``; ``env_overrides`` (row 9's curve)
    change the worker's settings."""
    env = stack.env(
        stack.url(db),
        NANOGPT_BASE_URL=lane.sim.base_url,
        NANOGPT_API_KEY="x",
        TTS_UPSTREAM_RATE=repr(lane.rate_per_s),
        **env_overrides,
    )
    stack.worker(env)
    tag = uuid.uuid4().hex[:6]
    started = time.time()
    with Caller(stack.url(db)) as c:
        for n, gen_s in enumerate(work):
            jid = f"r6-{tag}-{n}"
            lane.jids.append(jid)
            text = f"Row 6 job {n} {directive(gen_s=round(gen_s, 3))}"
            c.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=stack.receiver.url, job_id=jid)
    # Everything generates within jobs × mean ÷ slots after the last submit; a lane that has not
    # delivered long after that lost jobs.
    horizon_s = 120 + len(work) * statistics.mean(work) / size.slots + len(work) / 5
    arrivals = stack.tally.wait(lane.jids, timeout_s=horizon_s)
    lane.wall_s = time.time() - started
    for path_calls in lane.sim.calls().values():
        lane.answered += path_calls.answered
        lane.refused += path_calls.refused
    for jid in lane.jids:
        run_id = stack.tally.run_ids.get(jid)
        finished_at = lane.sim.finished_at(run_id) if run_id else None
        if stack.tally.types.get(jid) != "tts.completed" or finished_at is None:
            continue  # failed (its webhook says so)
        lane.completed += 1
        lane.latencies_s.append(arrivals[jid] - finished_at)


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    work = workload(size)
    lanes_spec = [("budget", BUDGET_RATE_PER_S), ("no budget", 0.0)]
    lanes: list[Lane] = []
    with Stack() as stack, contextlib.ExitStack() as sims:
        for db, (label, rate) in enumerate(lanes_spec, start=1):
            sim = sims.enter_context(
                Simulator(api_key="x", upstream_slots=size.slots, rate_limit_per_s=SIM_RATE_PER_S)
            )
            lane = Lane(label, rate, sim)
            _run_lane(stack, lane, db, work, size)
            lanes.append(lane)
    budget, free = lanes
    if budget.completed < len(work):
        raise BenchError(f"budget lane: {len(work) - budget.completed} jobs did not complete")
    rows = [
        "| lane | `TTS_UPSTREAM_RATE` | calls answered | calls refused (429) | refused share"
        " | jobs completed | ready→webhook p50 | p95 | max | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lane in lanes:
        worst = max(lane.latencies_s) if lane.latencies_s else float("nan")
        rows.append(
            f"| {lane.label} | {lane.rate_per_s:g} | {lane.answered} | {lane.refused} |"
            f" {lane.refused_share:.1%} | {lane.completed}/{len(work)} | {lane.p50:.2f} s |"
            f" {lane.p95:.2f} s | {worst:.2f} s | {lane.wall_s:.0f} s |"
        )
    details = [
        f"{size.jobs} jobs submitted at once, generation {size.gen_s[0]:g}-{size.gen_s[1]:g} s"
        f" (mean {statistics.mean(work):.1f} s) through a first-in-first-out upstream queue with"
        f" {size.slots} generators; the simulator refuses every call past"
        f" {SIM_RATE_PER_S:g} in any second (429, `Retry-After: 1`). One worker per lane, prefork"
        " × 8 as the Procfile runs it, production defaults otherwise; lanes one after the other.",
        "",
        *rows,
        "",
        "ready→webhook: from the simulator's completion of the run to the webhook's arrival at"
        " the receiver. A job that failed upstream or in the worker counts as not completed.",
    ]
    passed = (
        budget.refused_share <= MAX_REFUSED_SHARE
        and budget.completed == len(work)
        and budget.p95 <= MAX_P95_S
    )
    return Row(
        number=6,
        title=TITLE,
        target=TARGET,
        figure=(
            f"budget: {budget.refused_share:.1%} refused ({budget.refused} of"
            f" {budget.answered + budget.refused}), {budget.completed}/{len(work)} completed,"
            f" p95 {budget.p95:.1f} s (p50 {budget.p50:.1f} s); no budget:"
            f" {free.refused_share:.0%} refused, {free.completed}/{len(work)}, p95"
            f" {free.p95:.1f} s"
        ),
        passed=passed if size_name == "full" else None,
        details=details,
        values={
            "lanes": [
                {
                    "label": lane.label,
                    "rate_per_s": lane.rate_per_s,
                    "answered": lane.answered,
                    "refused": lane.refused,
                    "completed": lane.completed,
                    "p50_s": lane.p50,
                    "p95_s": lane.p95,
                    "wall_s": lane.wall_s,
                }
                for lane in lanes
            ]
        },
    )
