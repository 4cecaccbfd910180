"""Row 5's workload replayed on paper: the same upstream queue, polls placed by the schedule.

No worker, no HTTP: each job is polled one interval after its submit and then after each delay that
:func:`tasks.pacing.schedule.next_poll_delay_s` returns for what the job record has seen (built as
``tasks/steps/poll.py``'s ``_requeue`` builds it), until a poll lands after its generation ended.
It predicts what the real lanes should measure (less the worker's processing time), so a
disagreement points at the harness; and it answers "what if the schedule were different" in a
second, for whoever tunes ``tasks/pacing/schedule.py``.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from tasks.pacing import schedule
from workers.simulator_scenario import Slot, UpstreamQueue

# Far beyond any job here: the model is about spacing, not deadlines.
NO_DEADLINE_S = 1e9


@dataclass(frozen=True)
class Replay:
    calls: list[int]
    latencies_s: list[float]  # from completion upstream to the poll that saw it

    @property
    def calls_per_job(self) -> float:
        return statistics.mean(self.calls)


def upstream(work: list[tuple[float, float]], slots: int) -> tuple[UpstreamQueue, list[Slot]]:
    """The upstream queue with every job of ``work`` ((arrival, generation s)) admitted."""
    queue = UpstreamQueue(slots)
    return queue, [queue.admit(arrival_s, gen_s) for arrival_s, gen_s in work]


def _next_delay_s(
    progress: schedule.Progress,
    now: float,
    *,
    interval_s: float,
    max_interval_s: float,
    rng: random.Random,
) -> float:
    """The wait the worker computes for ``progress`` at ``now`` (no deadline here)."""
    delay_s = schedule.next_poll_delay_s(
        progress,
        interval_s=interval_s,
        max_interval_s=max_interval_s,
        now=now,
        deadline_at=NO_DEADLINE_S,
        rand=rng.random,
    )
    assert delay_s is not None  # no deadline
    return delay_s


def replay(
    work: list[tuple[float, float]],
    slots: int,
    *,
    interval_s: float,
    max_interval_s: float,
    seed: int = 1,
) -> Replay:
    """Poll every job of ``work`` from its arrival as the project's schedule would."""
    queue, placed = upstream(work, slots)
    rng = random.Random(seed)
    limits = {"interval_s": interval_s, "max_interval_s": max_interval_s}
    calls: list[int] = []
    latencies: list[float] = []
    for (arrival_s, _), slot in zip(work, placed, strict=True):
        # The first poll waits one interval after the submit (``_start_polling``).
        first = schedule.Progress(None)
        at = arrival_s + _next_delay_s(first, arrival_s, **limits, rng=rng)
        polls, seen = 1, schedule.Seen()
        while at < slot.ends_at:
            progress, seen = seen.after(queue.position(slot.index, at), at)
            at += _next_delay_s(progress, at, **limits, rng=rng)
            polls += 1
        calls.append(polls)
        latencies.append(at - slot.ends_at)
    return Replay(calls, latencies)


def queued_share(work: list[tuple[float, float]], slots: int) -> tuple[float, float]:
    """(mean seconds a job waits for a generator, mean seconds it generates)."""
    _, placed = upstream(work, slots)
    waits = [slot.starts_at - arrival_s for (arrival_s, _), slot in zip(work, placed, strict=True)]
    return statistics.mean(waits), statistics.mean(g for _, g in work)
