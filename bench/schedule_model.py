"""Row 5's workload replayed on paper: the same upstream queue, polls placed by the schedule.

No worker, no HTTP: each job is polled one interval after its submit and then after each delay that
:func:`tasks.pacing.schedule.next_poll_delay_s` returns for what the job record has seen (built as
``tasks/steps/poll.py``'s ``_requeue`` builds it), until a poll lands after its generation ended.
With ``learned`` generation times, every wait is aimed as :mod:`tasks.pacing.aim` aims it (the
first from the submit, as ``tasks/steps/submit.py`` does): the fleet's steady state once it has
learned them and the queue's speed (the median of the moves a first replay saw).
It predicts what the real lanes should measure (less the worker's processing time), so a
disagreement points at the harness; and it answers "what if the schedule were different" in a
second, for whoever tunes ``tasks/pacing/schedule.py``.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.pacing import aim, learning, poll_value, schedule
from workers.simulator_scenario import Slot, UpstreamQueue

# Far beyond any job here: the model is about spacing, not deadlines.
NO_DEADLINE_S = 1e9


@dataclass(frozen=True)
class Replay:
    calls: list[int]
    latencies_s: list[float]  # from completion upstream to the poll that saw it
    moves: list[float]  # seconds per place of every queue move a poll saw (what a fleet learns)

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
    aimed_s: float | None = None,
) -> float:
    """The wait the worker computes for ``progress`` at ``now`` (no deadline here)."""
    delay_s = schedule.next_poll_delay_s(
        progress,
        interval_s=interval_s,
        max_interval_s=max_interval_s,
        now=now,
        deadline_at=NO_DEADLINE_S,
        rand=rng.random,
        aimed_s=aimed_s,
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
    learned: Sequence[float] = (),
) -> Replay:
    """Poll every job of ``work`` from its arrival as the project's schedule would, aiming
    with the ``learned`` generation times (none: as a fleet that has learned nothing) and the
    queue's fast speed learned from the moves a first replay saw."""
    s_per_place = None
    if learned:
        plain = replay(work, slots, interval_s=interval_s, max_interval_s=max_interval_s)
        s_per_place = learning.Fleet((), tuple(plain.moves)).s_per_place()
    queue, placed = upstream(work, slots)
    rng = random.Random(seed)
    gens = poll_value.Generations(learned)
    limits = {"interval_s": interval_s, "max_interval_s": max_interval_s}
    calls: list[int] = []
    latencies: list[float] = []
    moves: list[float] = []
    for (arrival_s, _), slot in zip(work, placed, strict=True):
        # The first poll waits one interval after the submit, or for the earliest generations
        # to end (``_start_polling``).
        first = schedule.Progress(None)
        aimed = aim.at_head_s(0.0, gens, interval_s)
        at = arrival_s + _next_delay_s(first, arrival_s, **limits, rng=rng, aimed_s=aimed)
        polls, seen = 1, schedule.Seen()
        last = poll_value.Candidate("job", arrival_s, None)
        started_after: float | None = None
        while at < slot.ends_at:
            position = queue.position(slot.index, at)
            if last.queue_position and position and position < last.queue_position:
                assert last.seen_at is not None
                moves.append((at - last.seen_at) / (last.queue_position - position))
            progress, seen = seen.after(position, at)
            if started_after is None and not position:
                started_after = last.seen_at
            aimed = aim.wanted_s(
                progress,
                generating_s=None if position or started_after is None else at - started_after,
                s_per_place=s_per_place,
                gens=gens,
                interval_s=interval_s,
            )
            last = poll_value.Candidate(
                "job", at, position, seen.first_position, seen.first_seen_at
            )
            at += _next_delay_s(progress, at, **limits, rng=rng, aimed_s=aimed)
            polls += 1
        calls.append(polls)
        latencies.append(at - slot.ends_at)
    return Replay(calls, latencies, moves)


def queued_share(work: list[tuple[float, float]], slots: int) -> tuple[float, float]:
    """(mean seconds a job waits for a generator, mean seconds it generates)."""
    _, placed = upstream(work, slots)
    waits = [slot.starts_at - arrival_s for (arrival_s, _), slot in zip(work, placed, strict=True)]
    return statistics.mean(waits), statistics.mean(g for _, g in work)
