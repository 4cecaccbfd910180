"""Generation times from the intervals polls show (tasks/pacing/censoring.py)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tasks.pacing import censoring, poll_value


def _polled(gen_s: float, first_s: float, interval_s: float) -> tuple[float, float]:
    """The interval a job of ``gen_s`` shows when polled at ``first_s``, then every interval."""
    after, by = 0.0, first_s
    while by < gen_s:
        after, by = by, by + interval_s
    return after, by


def test_jobs_done_by_their_first_poll_do_not_drag_the_earliest_time_down() -> None:
    """4-16 s jobs polled first at 7 s, then every 3 s: the earliest learned is about 4 s (the
    middle of (0, 7] would say 3.5, and the aim's first poll would settle a second early)."""
    rng = random.Random(3)
    intervals = [_polled(rng.uniform(4.0, 16.0), 7.0, 3.0) for _ in range(256)]
    gens = poll_value.Generations(censoring.impute(intervals))
    assert 3.6 <= gens.time_of_share(0.005) <= 4.7  # counts of 256 jobs: a few tenths
    middles = poll_value.Generations([(lo + hi) / 2 for lo, hi in intervals])
    assert middles.time_of_share(0.005) == 3.5
    assert 8.5 <= gens.time_of_share(0.5) <= 11.5  # the middles of one-interval windows


def test_a_density_rising_towards_the_bound_errs_late_by_at_most_one_interval_s_worth() -> None:
    """Fewer jobs end just below the first poll than just above it (a distribution's left
    tail): spread at the density above, they are taken to end later than they did, but never
    after the bound, and fewer of them end before the learned earliest than end in the one
    interval after the bound (the aim's first poll waits on no more jobs than a poll does)."""
    rng = random.Random(5)
    gens_s = [4.0 + 12.0 * rng.random() ** 0.5 for _ in range(256)]  # density rising with time
    intervals = [_polled(g, 7.0, 3.0) for g in gens_s]
    earliest = poll_value.Generations(censoring.impute(intervals)).time_of_share(0.005)
    assert min(gens_s) < earliest <= 7.0
    assert sum(g < earliest for g in gens_s) < sum(7.0 < g <= 10.0 for g in gens_s)


def test_nothing_seen_above_the_bound_spreads_over_all_of_it() -> None:
    times = censoring.impute([(0.0, 6.0)] * 20)
    assert all(0.0 <= t <= 6.0 for t in times)
    assert min(times) < 1.0
    assert max(times) > 5.0


def test_exact_times_stay_exact_and_order_is_kept() -> None:
    assert censoring.impute([(4.5, 4.5), (2.0, 2.0)]) == (4.5, 2.0)
    assert censoring.impute([]) == ()


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-5, max_value=100), st.floats(min_value=0.001, max_value=100)
        ).filter(lambda iv: iv[0] < iv[1]),
        max_size=60,
    )
)
def test_every_time_lies_within_what_its_job_showed(intervals: list[tuple[float, float]]) -> None:
    times = censoring.impute(intervals)
    assert len(times) == len(intervals)
    for (after, by), t in zip(intervals, times, strict=True):
        assert max(0.0, after) <= t <= by
