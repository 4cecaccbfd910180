"""The delay policy: never negative, never above the cap, never past the deadline."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks import schedule

intervals = st.floats(min_value=0.05, max_value=60)


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    position=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
    interval=intervals,
    extra=st.floats(min_value=0, max_value=600),
    remaining=st.floats(min_value=-100, max_value=10_000),
    rand=st.floats(min_value=0, max_value=1),
)
def test_poll_delay_bounds(
    attempt: int,
    position: int | None,
    interval: float,
    extra: float,
    remaining: float,
    rand: float,
) -> None:
    cap = interval + extra
    now, deadline_at = 1000.0, 1000.0 + remaining
    remaining = deadline_at - now  # what the policy sees, after float rounding
    delay = schedule.next_poll_delay_s(
        attempt,
        position,
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


def test_poll_delay_grows_from_interval_to_cap() -> None:
    delays = [
        schedule.next_poll_delay_s(
            a, None, interval_s=3, max_interval_s=30, now=0, deadline_at=10_000, rand=lambda: 0.5
        )
        for a in range(10)
    ]
    assert delays[0] == pytest.approx(3.0)
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(30.0)


def test_queue_position_is_a_floor() -> None:
    def at(attempt: int, position: int | None) -> float | None:
        return schedule.next_poll_delay_s(
            attempt,
            position,
            interval_s=2,
            max_interval_s=30,
            now=0,
            deadline_at=10_000,
            rand=lambda: 0.5,
        )

    assert at(0, 0) == pytest.approx(2.0)
    assert at(0, 4) == pytest.approx(6.0)  # four jobs ahead: wait longer than the first interval
    assert at(0, 1000) == pytest.approx(30.0)
    assert at(5, 0) == at(5, None)  # at the head of the queue, growth still applies


def test_jitter_spreads_but_stays_near() -> None:
    low = schedule.next_poll_delay_s(
        0, None, interval_s=10, max_interval_s=30, now=0, deadline_at=100, rand=lambda: 0.0
    )
    high = schedule.next_poll_delay_s(
        0, None, interval_s=10, max_interval_s=30, now=0, deadline_at=100, rand=lambda: 1.0
    )
    assert low == pytest.approx(8.5)
    assert high == pytest.approx(11.5)


def test_last_poll_lands_on_the_deadline() -> None:
    delay = schedule.next_poll_delay_s(
        5, None, interval_s=3, max_interval_s=30, now=100, deadline_at=101.5, rand=lambda: 0.5
    )
    assert delay == pytest.approx(1.5)


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
    assert delay > 0
    assert delay <= max(cap, retry_after or 0, schedule.MIN_DELAY_S)
    if retry_after is not None:
        assert delay >= retry_after


def test_retry_delay_is_exponential_then_capped() -> None:
    delays = [schedule.retry_delay_s(n, base_s=1, max_s=60, rand=lambda: 1.0) for n in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
