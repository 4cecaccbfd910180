"""The delay policy: never negative, never above the cap, never past the deadline."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tasks.pacing import schedule

intervals = st.floats(min_value=0.05, max_value=60)


positions = st.one_of(st.none(), st.integers(min_value=0, max_value=10_000))


@given(
    position=positions,
    first=positions,
    since=st.floats(min_value=0, max_value=10_000),
    at_head=st.floats(min_value=0, max_value=100_000),
    interval=intervals,
    extra=st.floats(min_value=0, max_value=600),
    remaining=st.floats(min_value=-100, max_value=10_000),
    rand=st.floats(min_value=0, max_value=1),
)
def test_poll_delay_bounds(
    position: int | None,
    first: int | None,
    since: float,
    at_head: float,
    interval: float,
    extra: float,
    remaining: float,
    rand: float,
) -> None:
    cap = interval + extra
    now, deadline_at = 1000.0, 1000.0 + remaining
    remaining = deadline_at - now  # what the policy sees, after float rounding
    progress = schedule.Progress(position, first, since_first_s=since, at_head_s=at_head)
    delay = schedule.next_poll_delay_s(
        progress,
        interval_s=interval,
        max_interval_s=cap,
        now=now,
        deadline_at=deadline_at,
        rand=lambda: rand,
    )
    if remaining <= 0:
        assert delay is None
        return
    assert delay is not None
    assert 0 < delay <= cap
    assert delay <= remaining
    if remaining >= cap:  # jitter aside, never below the first interval
        assert delay >= min(interval, cap) * (1 - schedule.JITTER) - 1e-9


def delay(progress: schedule.Progress, *, interval: float = 3, cap: float = 30) -> float | None:
    return schedule.next_poll_delay_s(
        progress, interval_s=interval, max_interval_s=cap, now=0, deadline_at=10_000, rand=no_jitter
    )


def no_jitter() -> float:
    return 0.0  # the draw that shortens nothing


def test_at_the_head_polls_are_steady_for_a_minute_then_grow() -> None:
    # Polls placed by the policy itself, from the moment the job reached the head.
    age, waits = 0.0, []
    while age < 600:
        wait = delay(schedule.Progress(None, at_head_s=age))
        assert wait is not None
        waits.append(wait)
        age += wait
    steady = [w for w in waits if w == 3.0]
    assert len(steady) == 23  # every 3 s through the first minute (and up to 66 s)
    assert waits == sorted(waits)
    grown = waits[len(steady) :]
    assert grown[1] == pytest.approx(1.5 * grown[0])
    assert waits[-1] == 30.0
    assert len(waits) < 45  # ten minutes at the head cost about 40 polls, not 200
    assert delay(schedule.Progress(0, at_head_s=90)) == delay(schedule.Progress(None, at_head_s=90))


def test_queued_waits_aim_just_short_of_the_head() -> None:
    # Before the queue has been watched: the prior speed, one second per place.
    assert delay(schedule.Progress(10)) == pytest.approx(5.0)
    assert delay(schedule.Progress(2)) == 3.0  # never below the first interval
    assert delay(schedule.Progress(1000)) == 30.0  # never above the cap
    # Ten places in 20 s since first seen queued: 2 s per place; six ahead is about 12 s.
    moved = schedule.Progress(6, first_position=16, since_first_s=20)
    assert delay(moved) == pytest.approx(0.5 * 12)
    # A queue that has not moved in 9 s takes at least 9 s per place.
    assert delay(schedule.Progress(2, first_position=2, since_first_s=9)) == pytest.approx(9.0)


def test_jitter_only_shortens() -> None:
    def at(r: float) -> float | None:  # r: the random draw
        return schedule.next_poll_delay_s(
            schedule.Progress(None),
            interval_s=10,
            max_interval_s=30,
            now=0,
            deadline_at=100,
            rand=lambda: r,
        )

    assert at(0.0) == pytest.approx(10.0)  # never later than planned
    assert at(1.0) == pytest.approx(8.0)
    assert at(0.5) == pytest.approx(9.0)


def test_last_poll_lands_on_the_deadline() -> None:
    wait = schedule.next_poll_delay_s(
        schedule.Progress(None, at_head_s=60),
        interval_s=3,
        max_interval_s=30,
        now=100,
        deadline_at=101.5,
        rand=no_jitter,
    )
    assert wait == pytest.approx(1.5)


@given(
    retries=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.01, max_value=10),
    extra=st.floats(min_value=0, max_value=100),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=1000)),
    rand=st.floats(min_value=0, max_value=1),
)
def test_retry_delay_bounds(
    retries: int, base: float, extra: float, retry_after: float | None, rand: float
) -> None:
    cap = base + extra
    delay = schedule.retry_delay_s(
        retries, base_s=base, max_s=cap, retry_after_s=retry_after, rand=lambda: rand
    )
    assert 0 < delay <= cap
    if retry_after is not None:  # a floor, up to the cap
        assert delay >= min(retry_after, cap)


@given(
    retries=st.integers(),
    base=st.floats(min_value=1e-9, max_value=1e300),
    cap=st.floats(min_value=1e-9, max_value=1e300),
    retry_after=st.one_of(st.none(), st.floats()),  # any float: inf, -inf and NaN included
    rand=st.floats(),
)
# Random draws find these only sometimes; every run tries them.
@example(retries=0, base=1.0, cap=60.0, retry_after=math.nan, rand=0.5)
@example(retries=0, base=1.0, cap=60.0, retry_after=math.inf, rand=0.5)
@example(retries=0, base=1.0, cap=60.0, retry_after=None, rand=math.nan)
def test_retry_delay_is_always_finite_and_capped(
    retries: int, base: float, cap: float, retry_after: float | None, rand: float
) -> None:
    delay = schedule.retry_delay_s(
        retries, base_s=base, max_s=cap, retry_after_s=retry_after, rand=lambda: rand
    )
    assert math.isfinite(delay)
    assert 0 < delay <= cap


def test_retry_after_beyond_the_cap_waits_the_cap() -> None:
    for draw in (0.0, 1.0):
        delay = schedule.retry_delay_s(
            0, base_s=1, max_s=60, retry_after_s=3600, rand=lambda d=draw: d
        )
        assert delay == 60
    # Below the cap it is still a floor over the backoff.
    assert schedule.retry_delay_s(0, base_s=1, max_s=60, retry_after_s=12, rand=no_jitter) == 12


@pytest.mark.parametrize("retry_after", [math.inf, -math.inf, math.nan])
def test_non_finite_retry_after_counts_as_absent(retry_after: float) -> None:
    expected = [schedule.retry_delay_s(n, base_s=1, max_s=60, rand=no_jitter) for n in range(8)]
    got = [
        schedule.retry_delay_s(n, base_s=1, max_s=60, retry_after_s=retry_after, rand=no_jitter)
        for n in range(8)
    ]
    assert got == expected


@pytest.mark.parametrize(
    ("base", "cap"), [(math.inf, 60), (1, math.inf), (math.nan, 60), (1, math.nan), (1, 0)]
)
def test_retry_delay_refuses_a_non_finite_or_empty_range(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="finite positive"):
        schedule.retry_delay_s(3, base_s=base, max_s=cap)


def test_retry_delay_is_exponential_then_capped() -> None:
    delays = [schedule.retry_delay_s(n, base_s=1, max_s=60, rand=lambda: 1.0) for n in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
