"""Aim the next poll at the job's likely completion, from what the fleet learned.

Pure: the poll step (``tasks/steps/poll.py``) passes the job's progress, how long it has been
generating, and what the fleet learned (:mod:`tasks.pacing.learning`); nothing here reads Redis
or a clock. The answer is the wait the schedule (:func:`tasks.pacing.schedule.next_poll_delay_s`)
then floors at ``TTS_POLL_INTERVAL``, caps at ``TTS_POLL_MAX_INTERVAL`` and jitters; None means
nothing learned applies, and the schedule's own rule decides, as before issue 22.

At the head (generating), with the model's generation times learned, the next poll lands one
interval after the moment by which another :data:`SKIP_SHARE` of all generations would have
ended: inside the bulk of the distribution that is one interval (a job that ends just after a
poll waits at most about one interval, as with a fixed loop); before the earliest generations
end, and across stretches where none end, it skips ahead instead of asking "pending?" again.
Past the longest generation seen, the schedule's age rule takes over.

Queued, the fleet's speed (seconds per place) says when the job starts. The wait is aimed at the
first poll worth making once it generates, except that a job far back first looks again when
about :func:`sure_places` remain: the time for ``p`` places to clear varies by about
``s_per_place * sqrt(p)`` (places clear as independent generations end), and the start must be
known to within :data:`START_SPREAD` of an interval for the aim at its completion to hold.
"""

from __future__ import annotations

from tasks.pacing import poll_value, schedule

# Each aimed wait lets at most this share of all generations end more than one interval before
# the poll: small next to the 5 % a p95 ignores, large enough to step over gaps where none end.
SKIP_SHARE = 0.005
# The start is wanted known to within this share of an interval before the aim relies on it.
START_SPREAD = 0.5
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
    until = gens.time_of_share(done + SKIP_SHARE)
    return max(0.0, until - elapsed_s) + interval_s


def sure_places(s_per_place: float, interval_s: float) -> float:
    """How few places ahead make the start known to :data:`START_SPREAD` of an interval."""
    return max(1.0, (START_SPREAD * interval_s / max(s_per_place, MIN_S_PER_PLACE)) ** 2)


def queued_s(
    position: int, s_per_place: float, gens: poll_value.Generations, interval_s: float
) -> float:
    """The wait for a job ``position`` places from the head, the queue clearing a place every
    ``s_per_place`` seconds (the fleet's speed)."""
    s_per_place = max(s_per_place, MIN_S_PER_PLACE)
    to_start_s = position * s_per_place
    first_s = at_head_s(0.0, gens, interval_s)
    if first_s is None:  # no generations learned: look as the head comes near, as before
        return schedule.ARRIVAL_FRACTION * to_start_s
    aimed_s = to_start_s + first_s
    sure = sure_places(s_per_place, interval_s)
    if position <= sure:
        return aimed_s
    return min(aimed_s, (position - sure) * s_per_place)


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
    its estimated start (None: unknown). ``s_per_place``: the fleet's queue speed (None: not
    learned; the job's own measurement stands in once its queue moved)."""
    position = progress.queue_position
    if position and position > 0:
        speed = s_per_place
        if speed is None and progress.first_position not in (None, position):
            speed = progress.seconds_per_place()
        if speed is None:
            return None
        return queued_s(position, speed, gens, interval_s)
    if generating_s is None:
        return None
    return at_head_s(generating_s, gens, interval_s)
