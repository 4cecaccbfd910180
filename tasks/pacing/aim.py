"""Aim the next poll at the job's likely completion, from what the fleet learned.

Pure: the poll step (``tasks/steps/poll.py``) and the submit (``tasks/steps/submit.py``) pass
the job's progress, how long it has been generating, and what the fleet learned
(:mod:`tasks.pacing.learning`); nothing here reads Redis or a clock. The answer is the wait the
schedule (:func:`tasks.pacing.schedule.next_poll_delay_s`) then floors at
``TTS_POLL_INTERVAL``, caps at ``TTS_POLL_MAX_INTERVAL`` and jitters; None means nothing
learned applies, and the schedule's own rule decides, as before issue 22.

The one thing the aim relies on is safe whatever the queue does: a job cannot end sooner than
its model's earliest generations after it started, and it cannot have started before the last
answer that showed it queued (or its submit). The earliest generations are learned from what
polls showed (:mod:`tasks.pacing.censoring`: jobs done before their first poll are placed
below it at the density seen just after it, not at half of it). So:

* generating, before the earliest generations could have ended (counted from that earliest
  start), the next poll comes one interval after they could; after that, every interval (a
  job that ends just after a poll waits at most about one interval, as with a fixed loop),
  until it outlives every generation learned, when the schedule's rule takes over. Stretches
  inside the distribution where none end are not skipped: that would trust an estimate of the
  start, which a queue of few generators gets wrong by seconds;
* queued, the wait is the longer of that same first wait (the job has not started yet) and
  the schedule's own rule (half the time the jobs ahead should take, at the queue's speed);
* the submit's first poll likewise, the places ahead being what is left of the line the fleet
  last saw (:meth:`tasks.pacing.learning.Fleet.places_ahead`).
"""

from __future__ import annotations

from tasks.pacing import poll_value, schedule

# The earliest generations: the time by which this share of them had ended.
SKIP_SHARE = 0.005
# A queue speed below this (seconds per place) is a measuring artefact, not a queue.
MIN_S_PER_PLACE = 1e-3


def at_head_s(elapsed_s: float, gens: poll_value.Generations, interval_s: float) -> float | None:
    """The wait for a job generating for ``elapsed_s`` (from its earliest start); None before
    enough generations are learned, or once the job has outlived every one of them."""
    if not gens.learned:
        return None
    if gens.share_done(max(0.0, elapsed_s)) >= 1.0:
        return None
    earliest_s = gens.time_of_share(SKIP_SHARE)
    return max(0.0, earliest_s - elapsed_s) + interval_s


def queued_s(
    position: int, s_per_place: float, gens: poll_value.Generations, interval_s: float
) -> float | None:
    """The wait for a job ``position`` places from the head of a queue clearing a place every
    ``s_per_place`` seconds: the longer of the first wait worth making once it starts (it has
    not yet) and the schedule's (half the time to the head). None before generations are
    learned."""
    first_s = at_head_s(0.0, gens, interval_s)
    if first_s is None:
        return None
    to_head_s = max(0, position) * max(s_per_place, MIN_S_PER_PLACE)
    return max(first_s, schedule.ARRIVAL_FRACTION * to_head_s)


def wanted_s(
    progress: schedule.Progress,
    *,
    generating_s: float | None,
    s_per_place: float | None,
    gens: poll_value.Generations,
    interval_s: float,
) -> float | None:
    """The aimed wait for ``progress`` (before the schedule's floor, cap and jitter), or None
    for the schedule's own rule. ``generating_s``: how long the job has been generating, from
    its earliest start (the answer before the first that showed it at the head; None:
    unknown). ``s_per_place``: the fleet's
    queue speed (:meth:`tasks.pacing.learning.Fleet.s_per_place`; None: not learned, and the
    job's own stands in, the prior until its queue moved)."""
    position = progress.queue_position
    if position and position > 0:
        speed = progress.seconds_per_place() if s_per_place is None else s_per_place
        return queued_s(position, speed, gens, interval_s)
    if generating_s is None:
        return None
    return at_head_s(generating_s, gens, interval_s)
