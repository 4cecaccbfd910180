"""When to look again: pure functions of (attempt, queue position, settings, clock).

Nothing here sleeps or reads a clock; callers pass ``now`` and a random source, so the policy is
unit-tested exactly and the tasks stay thin.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Each unanswered poll stretches the next wait by this factor, so a long job costs few polls.
POLL_GROWTH = 1.5
# A queue position is a count of jobs ahead; this many first-interval waits per place ahead is
# roughly how long NanoGPT takes to move one place (observed: a few seconds per short job).
WAIT_PER_PLACE = 0.5
# +-15 % spreads the polls of jobs submitted together, so they do not hit NanoGPT in bursts.
JITTER = 0.15
# Never schedule a poll sooner than this: a zero countdown is a busy loop.
MIN_DELAY_S = 0.05
# Growth past this many steps is beyond any cap (1.5**64 ~ 2e11) and would overflow floats.
MAX_GROWTH_STEPS = 64

Random = Callable[[], float]


def _jitter(delay_s: float, rand: Random) -> float:
    return delay_s * (1.0 + JITTER * (2.0 * rand() - 1.0))


def next_poll_delay_s(
    attempt: int,
    queue_position: int | None,
    *,
    interval_s: float,
    max_interval_s: float,
    now: float,
    deadline_at: float,
    rand: Random = random.random,
) -> float | None:
    """Seconds until the next status check, or None when the deadline leaves no room for one.

    ``attempt`` counts the polls already made (0 before the second poll). The wait grows
    geometrically from ``interval_s``; a queue position raises it to at least the time the jobs
    ahead are likely to take. Always within ``[MIN_DELAY_S, max_interval_s]`` and never past
    the deadline: the last poll is placed at the deadline itself.
    """
    remaining_s = deadline_at - now
    if remaining_s <= 0:
        return None
    grown_s = interval_s * POLL_GROWTH ** min(max(0, attempt), MAX_GROWTH_STEPS)
    if queue_position is not None:
        # Jobs ahead are a floor on the wait; they never shorten it, since a job at the head of
        # the queue may still take a while to generate.
        grown_s = max(grown_s, interval_s * (1.0 + WAIT_PER_PLACE * queue_position))
    delay_s = min(_jitter(min(grown_s, max_interval_s), rand), max_interval_s)
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

    Exponential from ``base_s`` with "full jitter" over its upper half, capped at ``max_s``; a
    server's ``Retry-After`` is a floor that the cap does not lower (asking earlier would only be
    refused again).
    """
    ceiling_s = min(max_s, base_s * 2.0 ** min(max(0, retries), MAX_GROWTH_STEPS))
    delay_s = ceiling_s * (0.5 + 0.5 * rand())
    if retry_after_s is not None:
        delay_s = max(delay_s, retry_after_s)
    return max(delay_s, MIN_DELAY_S)
