"""Aim the next poll at the job's likely completion, from what the fleet learned.

Pure: the poll step (``tasks/steps/poll.py``) passes the job's progress, how long it has been
generating, and what the fleet learned (:mod:`tasks.pacing.learning`); nothing here reads Redis
or a clock. The answer is the wait the schedule (:func:`tasks.pacing.schedule.next_poll_delay_s`)
then floors at ``TTS_POLL_INTERVAL``, caps at ``TTS_POLL_MAX_INTERVAL`` and jitters; None means
nothing learned applies, and the schedule's own rule decides, as before issue 22.

At the head (generating), with the model's generation times learned, the next poll lands one
interval after the moment by which another :data:`SKIP_SHARE` of all generations would have
ended: before the earliest generations end, and across stretches longer than an interval where
none end, it skips ahead instead of asking "pending?" again; inside the bulk of the
distribution it is one interval (a job that ends just after a poll waits at most about one
interval, as with a fixed loop). Past the longest generation seen, the schedule's rule takes
over.

Queued, the wait is aimed at the first poll worth making once the job generates, were it to
start as early as is plausible: its places cleared at the fleet's fast speed (a low quantile of
the recent moves, :meth:`tasks.pacing.learning.Fleet.fast_s_per_place`), so a queue that speeds
up does not leave a finished job waiting. A queue as regular as a hundred generators' makes the
fast and the usual speed close; a few generators with mixed jobs make it cautious.
``TTS_POLL_MAX_INTERVAL`` still caps every wait, so a job far back looks again meanwhile and
each answer re-aims it.
"""

from __future__ import annotations

from tasks.pacing import poll_value, schedule

# Each aimed wait lets at most this share of all generations end more than one interval before
# the poll: small next to the 5 % a p95 ignores, large enough to step over gaps where none end.
SKIP_SHARE = 0.005
# A job's own queue speed, measured over its wait so far, may run this much faster from here
# (the schedule's ARRIVAL_FRACTION: its queued waits are half the estimated time).
FAST_FACTOR = schedule.ARRIVAL_FRACTION
# A queue speed below this (seconds per place) is a measuring artefact, not a queue.
MIN_S_PER_PLACE = 1e-3


def at_head_s(elapsed_s: float, gens: poll_value.Generations, interval_s: float) -> float | None:
    """The wait for a job generating for ``elapsed_s``; None before enough generations are
    learned, or once the job has outlived every one of them."""
    if not gens.learned:
        return None
    done = gens.share_done(max(0.0, elapsed_s))
    if done >= 1.0:
        return None
    skip_s = max(0.0, gens.time_of_share(done + SKIP_SHARE) - elapsed_s)
    if done > 0 and skip_s < interval_s:
        # Learned times bunch between the polls that measured them (each is the middle of
        # its last two polls): a gap narrower than an interval is that bunching, not a
        # stretch where nothing ends.
        skip_s = 0.0
    return skip_s + interval_s


def earliest_start(
    c: poll_value.Candidate, now: float, fast_s_per_place: float | None
) -> float | None:
    """When the job's generation started, at the earliest plausible: its places ahead at the
    last queued answer cleared at the fleet's fast speed, else :data:`FAST_FACTOR` of the job's
    own. Early rather than late: a poll aimed from a late start skips past the completion.
    None if it was never seen."""
    if c.queue_position and fast_s_per_place is None and c.seen_at is not None:
        since_s = c.seen_at - c.first_seen_at if c.first_seen_at is not None else 0.0
        own = schedule.Progress(c.queue_position, c.first_position, since_s).seconds_per_place()
        fast_s_per_place = FAST_FACTOR * own
    return poll_value.generation_start(c, now, fast_s_per_place)


def queued_s(
    position: int, fast_s_per_place: float, gens: poll_value.Generations, interval_s: float
) -> float | None:
    """The wait for a job ``position`` places from the head, the queue clearing a place every
    ``fast_s_per_place`` seconds at its fastest plausible speed: the first poll worth making
    once it started that early. None before generations are learned."""
    first_s = at_head_s(0.0, gens, interval_s)
    if first_s is None:
        return None
    if position <= 0:
        return first_s
    return position * max(fast_s_per_place, MIN_S_PER_PLACE) + first_s


def wanted_s(
    progress: schedule.Progress,
    *,
    generating_s: float | None,
    fast_s_per_place: float | None,
    gens: poll_value.Generations,
    interval_s: float,
) -> float | None:
    """The aimed wait for ``progress`` (before the schedule's floor, cap and jitter), or None
    for the schedule's own rule. ``generating_s``: how long the job has been generating, from
    its earliest plausible start (None: unknown). ``fast_s_per_place``: the fleet's fast
    queue speed (:meth:`tasks.pacing.learning.Fleet.fast_s_per_place`; None: not learned, and
    the job's own measured speed, run :data:`FAST_FACTOR` faster, stands in once its queue
    moved)."""
    position = progress.queue_position
    if position and position > 0:
        speed = fast_s_per_place
        if speed is None and progress.first_position not in (None, position):
            speed = FAST_FACTOR * progress.seconds_per_place()
        if speed is None:
            return None
        return queued_s(position, speed, gens, interval_s)
    if generating_s is None:
        return None
    return at_head_s(generating_s, gens, interval_s)
