"""Row 5's workload replayed on paper: the same upstream queue, polls placed by the schedule.

No worker, no HTTP: each job is polled at its submit time and then after each delay that
:func:`tasks.schedule.next_poll_delay_s` returns for what the job record has seen (built as
``tasks/tts.py``'s ``_requeue`` builds it), until a poll lands after its generation ended. It
predicts what the real lanes should measure (less the worker's processing time), so a
disagreement points at the harness; and it answers "what if the schedule were different" in a
second, for whoever tunes ``tasks/schedule.py``.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from tasks import schedule
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


@dataclass
class _Seen:
    """What a job record keeps for the schedule (``tasks/tts.py``'s ``_requeue``)."""

    queue_position: int | None = None
    queue_seen_at: float | None = None
    head_since: float | None = None


def _next_delay_s(
    seen: _Seen,
    position: int | None,
    now: float,
    *,
    interval_s: float,
    max_interval_s: float,
    rng: random.Random,
) -> float:
    """The wait ``_requeue`` computes after a pending answer at ``now``; updates ``seen``."""
    head_since = seen.head_since if seen.head_since is not None else (None if position else now)
    progress = schedule.Progress(
        queue_position=position,
        previous_position=seen.queue_position,
        since_previous_s=now - seen.queue_seen_at if seen.queue_seen_at else 0.0,
        at_head_s=now - head_since if head_since is not None and not position else 0.0,
    )
    delay_s = schedule.next_poll_delay_s(
        progress,
        interval_s=interval_s,
        max_interval_s=max_interval_s,
        now=now,
        deadline_at=NO_DEADLINE_S,
        rand=rng.random,
    )
    assert delay_s is not None  # no deadline
    seen.queue_position, seen.queue_seen_at, seen.head_since = position, now, head_since
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
    calls: list[int] = []
    latencies: list[float] = []
    for (arrival_s, _), slot in zip(work, placed, strict=True):
        at, polls, seen = arrival_s, 1, _Seen()
        while at < slot.ends_at:
            position = queue.position(slot.index, at)
            at += _next_delay_s(
                seen,
                position,
                at,
                interval_s=interval_s,
                max_interval_s=max_interval_s,
                rng=rng,
            )
            polls += 1
        calls.append(polls)
        latencies.append(at - slot.ends_at)
    return Replay(calls, latencies)


def queued_share(work: list[tuple[float, float]], slots: int) -> tuple[float, float]:
    """(mean seconds a job waits for a generator, mean seconds it generates)."""
    _, placed = upstream(work, slots)
    waits = [slot.starts_at - arrival_s for (arrival_s, _), slot in zip(work, placed, strict=True)]
    return statistics.mean(waits), statistics.mean(g for _, g in work)
