"""Generation times from what polls can show: each completed job finished somewhere between two
answers, so the fleet learns an interval per job, and this turns the intervals into sample times.

Pure: :mod:`tasks.pacing.learning` keeps the intervals in Redis and calls :func:`impute`; the
aim (:mod:`tasks.pacing.aim`) and the ranking (:mod:`tasks.pacing.poll_value`) read the times.

A job seen generating before it ended finished in ``(after_s, by_s]``, ``after_s`` > 0 (its
times counted from its start); its time is the middle of that interval (one polling interval
wide: its mean, the density being about flat over so short a stretch). Spreading such times
over their intervals instead put a few of the fleet's first completions, polled every interval
from the submit, below the earliest true time, and those held the aim's first poll early for
as long as they were kept.

A job that ended before any answer showed it generating (done by its first poll) says only that
it took at most ``by_s``. Taking the middle of ``(0, by_s]`` drags the earliest times the fleet
learns down to half the first poll, and the aim, whose first poll comes one interval after
those, settles early (on 4-16 s jobs polled every 3 s: its first poll at 6 s, not 7). Instead
such jobs are spread below their bound at the density the fleet saw just above it: as many
as ended within one polling interval after the bound (``width``, the observed intervals'
median), over that interval's length. On a flat density that is exact. Where the density falls
towards the bound it takes them to end earlier than they did (the aim's first poll comes
early: more calls, not more lag); where it rises (a distribution's left tail) later, never
past the bound: the aim's first poll then settles where about as many jobs are done by it as
end in the interval after it, so it waits on no more jobs than any poll does. With nothing
seen above the bound, they are spread over all of ``(0, by_s]``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

# Spreads the jobs done before their first poll below it: the fractional parts of multiples of
# the golden ratio cover (0, 1) evenly whatever the number of samples, and give the same times
# for the same samples (no randomness in what two workers learn).
_GOLDEN = 0.6180339887498949


def _spread(index: int) -> float:
    return ((index + 1) * _GOLDEN) % 1.0


def impute(intervals: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    """One time per ``(after_s, by_s)`` interval, in the same order: the middle of it where
    ``after_s`` > 0 (``after_s == by_s``: that exact time); below ``by_s`` at the density seen
    just above it where ``after_s`` <= 0 (finished before it was seen generating)."""
    observed = [(lo, hi) for lo, hi in intervals if lo > 0]
    times = {i: (lo + hi) / 2 for i, (lo, hi) in enumerate(intervals) if lo > 0}
    bounds = [hi for lo, hi in intervals if lo <= 0]
    spread_s = None
    if bounds:
        bound = statistics.median(bounds)
        widths = [hi - lo for lo, hi in observed if hi > lo]
        width = statistics.median(widths) if widths else 0.0
        just_after = sum(1 for t in times.values() if bound < t <= bound + width)
        if width > 0 and just_after:
            spread_s = len(bounds) * width / just_after
    out = []
    for i, (lo, hi) in enumerate(intervals):
        if lo > 0:
            out.append(times[i])
        else:
            below = hi if spread_s is None else min(hi, spread_s)
            out.append(hi - below * _spread(i))
    return tuple(out)
