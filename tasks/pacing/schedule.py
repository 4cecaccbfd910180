"""When to look again: pure functions of (progress upstream, retries, settings, clock).

Nothing here sleeps or reads a clock; callers pass ``now`` and a random source, so the policy is
unit-tested exactly and the tasks stay thin.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

# At the head of the queue (generating) a job is checked every interval for this long: most
# TTS generations end within a minute, and the audio then waits at most one interval for us.
STEADY_AT_HEAD_S = 60.0
# Past that, the next poll waits this fraction of the extra time spent there: a job that runs
# for many minutes costs few polls (each wait about 1.5x the last, up to the cap).
AGE_FRACTION = 0.5
# Seconds per place ahead assumed before the queue has been seen to move: ElevenLabs-family
# jobs take a second or two and NanoGPT serves its queue with several generators.
PRIOR_S_PER_PLACE = 1.0
# While queued, look again after this share of the estimated wait for the head, so the next
# answer refines the estimate before the job starts rather than after it finished. Replayed on
# bench row 5's workload (bench/schedule_model.py), 0.8 overshot often enough to double the
# p95 from completion to webhook; 0.5 keeps it at the fixed 3 s interval's.
ARRIVAL_FRACTION = 0.5
# Up to 20 % off each wait spreads the polls of jobs submitted together, so they do not hit
# NanoGPT in bursts. Only ever shorter: a poll never comes later than the schedule says.
JITTER = 0.2
# A wait aimed at a job's likely completion (tasks/pacing/aim.py) loses up to this share of one
# interval only: 20 % of a 23 s aim would land most polls before the first generation could
# end, and an aim is already a poll every interval once generations could have ended: taking
# 10 % off each on average polled every 0.9 interval, a tenth more calls (bench row 8). Its
# polls are spread by the jobs' own starts too; the budget (tasks/pacing/budget.py) smooths
# what is left of a burst.
AIM_JITTER = 0.1
# Never schedule a poll sooner than this: a zero countdown is a busy loop.
MIN_DELAY_S = 0.05
# Growth past this many steps is beyond any cap (2**64 ~ 2e19) and would overflow floats.
MAX_GROWTH_STEPS = 64

Random = Callable[[], float]


@dataclass(frozen=True)
class Progress:
    """What the polls so far have seen of a job upstream.

    ``queue_position``: in the answer just received (None: not reported). ``first_position``
    and ``since_first_s``: the position in the first answer that showed the job queued, and the
    seconds since that answer. ``at_head_s``: how long the job has been seen at the head
    (position 0, or none reported); 0 while it is queued.
    """

    queue_position: int | None
    first_position: int | None = None
    since_first_s: float = 0.0
    at_head_s: float = 0.0

    def seconds_per_place(self) -> float:
        """The queue's speed: measured since the first queued answer, else the prior.

        A queue that has not moved at all in that time takes at least that long per place.
        """
        if self.first_position is None or self.since_first_s <= 0:
            return PRIOR_S_PER_PLACE
        moved = self.first_position - (self.queue_position or 0)
        if moved > 0:
            return self.since_first_s / moved
        return max(PRIOR_S_PER_PLACE, self.since_first_s)

    def wanted_s(self) -> float:
        """The wait this progress asks for, before the interval floor, cap and jitter."""
        position = self.queue_position
        if not position or position <= 0:
            return AGE_FRACTION * max(0.0, self.at_head_s - STEADY_AT_HEAD_S)
        return ARRIVAL_FRACTION * position * self.seconds_per_place()


@dataclass(frozen=True)
class Seen:
    """What a job record keeps between polls for the schedule (the poll step,
    ``tasks/steps/poll.py``)."""

    first_position: int | None = None  # the first queued position seen ...
    first_seen_at: float | None = None  # ... and when (epoch seconds)
    head_since: float | None = None  # first seen at the head (position 0, or none reported)

    def after(self, position: int | None, now: float) -> tuple[Progress, Seen]:
        """The progress an answer with ``position`` at ``now`` shows, and what to keep."""
        head_since = self.head_since
        if head_since is None and not position:
            head_since = now
        first_position, first_seen_at = self.first_position, self.first_seen_at
        if first_seen_at is None and position:
            first_position, first_seen_at = position, now
        progress = Progress(
            queue_position=position,
            first_position=first_position,
            since_first_s=now - first_seen_at if first_seen_at is not None else 0.0,
            at_head_s=now - head_since if head_since is not None and not position else 0.0,
        )
        return progress, Seen(first_position, first_seen_at, head_since)


def _jitter(delay_s: float, rand: Random, most_s: float) -> float:
    return delay_s - rand() * min(delay_s, most_s)


def next_poll_delay_s(
    progress: Progress,
    *,
    interval_s: float,
    max_interval_s: float,
    now: float,
    deadline_at: float,
    rand: Random = random.random,
    aimed_s: float | None = None,
) -> float | None:
    """Seconds until the next status check, or None when the deadline leaves no room for one.

    ``aimed_s``: the wait aimed at the job's likely completion from what the fleet learned
    (:func:`tasks.pacing.aim.wanted_s`); it then replaces the rule below, and the jitter takes
    at most :data:`AIM_JITTER` of one interval off it. Without it: queued, the wait aims just short
    of when the jobs ahead will be done, at the queue's measured speed (or
    :data:`PRIOR_S_PER_PLACE` until it has moved); at the head, it is the interval for
    :data:`STEADY_AT_HEAD_S`, then grows with the time spent there (:data:`AGE_FRACTION`).
    Either way within ``[interval_s, max_interval_s]`` before the jitter, which only shortens
    it (:data:`JITTER`); at least :data:`MIN_DELAY_S`; never past the deadline: the last poll
    is placed at the deadline itself.
    """
    remaining_s = deadline_at - now
    if remaining_s <= 0:
        return None
    if aimed_s is not None and not math.isfinite(aimed_s):
        aimed_s = None
    asked_s = progress.wanted_s() if aimed_s is None else aimed_s
    wanted_s = min(max(interval_s, asked_s), max_interval_s)
    if aimed_s is None:
        delay_s = _jitter(wanted_s, rand, JITTER * wanted_s)
    else:
        delay_s = _jitter(wanted_s, rand, AIM_JITTER * interval_s)
    delay_s = min(delay_s, max_interval_s)
    delay_s = max(delay_s, MIN_DELAY_S)
    return min(delay_s, remaining_s)


def retry_delay_s(
    retries: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rand: Random = random.random,
) -> float:
    """Backoff before retry number ``retries + 1`` after a transient fault.

    Exponential from ``base_s`` with "full jitter" over its upper half, at least
    :data:`MIN_DELAY_S`. A server's ``Retry-After`` is a floor (asking earlier would only be
    refused again), but the cap ``max_s`` wins over every floor, a larger ``Retry-After``
    included: the Redis broker's visibility timeout is sized from it
    (``tasks.config.celery_config.longest_countdown_s``), so a longer countdown could be delivered
    twice. Whether even the capped wait is worth it is the caller's deadline check. A non-finite
    ``retry_after_s`` counts as absent; ``base_s`` and ``max_s`` must be finite and positive
    (ValueError otherwise), so no inf or NaN ever comes out.
    """
    if not (0 < base_s < math.inf and 0 < max_s < math.inf):
        raise ValueError(f"retry delays need finite positive base_s, max_s: {base_s}, {max_s}")
    ceiling_s = min(max_s, base_s * 2.0 ** min(max(0, retries), MAX_GROWTH_STEPS))
    draw = rand()
    if not 0.0 <= draw <= 1.0:  # never from random.random; a NaN draw must not become the wait
        draw = 1.0
    delay_s = ceiling_s * (0.5 + 0.5 * draw)
    if retry_after_s is not None and math.isfinite(retry_after_s):
        delay_s = max(delay_s, retry_after_s)
    return min(max(delay_s, MIN_DELAY_S), max_s)


# Beyond the HTTP timeouts and the audio wall clock, how long a POST's claim lasts: the time
# between the claim and the POST, and between the answer and recording it.
POST_LEASE_SLACK_S = 5.0


def post_claim_s(*, connect_s: float, read_s: float, audio_s: float) -> float:
    """How long one POST (and reading a 200 answer's audio) can take, at most: its connect
    and read timeouts, the audio's wall clock, and :data:`POST_LEASE_SLACK_S`. The submit's
    claim lasts this long, and its hard time limit must exceed it."""
    return connect_s + read_s + audio_s + POST_LEASE_SLACK_S
