"""Aiming polls at a job's likely completion (tasks/pacing/aim.py), and what the schedule does
with an aimed wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.pacing import aim, poll_value, schedule
from tasks.pacing.poll_value import Generations

# Generation times uniform over 20-60 s, as bench rows 6 and 9 draw them.
UNIFORM = Generations([20.0 + 40.0 * i / 199 for i in range(200)])
INTERVAL = 3.0


def test_nothing_learned_leaves_the_schedule_in_charge() -> None:
    few = Generations([30.0] * (poll_value.MIN_SAMPLES - 1))
    assert aim.at_head_s(5.0, few, INTERVAL) is None
    head = schedule.Progress(0, at_head_s=5.0)
    assert aim.wanted_s(head, generating_s=5.0, s_per_place=None, gens=few, interval_s=3) is None
    queued = schedule.Progress(12, first_position=12, since_first_s=4.0)
    assert aim.wanted_s(queued, generating_s=None, s_per_place=0.5, gens=few, interval_s=3) is None


def test_at_the_head_the_first_poll_waits_for_the_earliest_generations() -> None:
    # Nothing ends before 20 s: the first look is one interval after the earliest do.
    wait = aim.at_head_s(1.0, UNIFORM, INTERVAL)
    assert wait is not None
    assert 20.0 - 1.0 + INTERVAL <= wait <= 21.0 - 1.0 + INTERVAL


def test_inside_the_distribution_polls_come_an_interval_apart() -> None:
    for elapsed in (20.5, 25.0, 40.0, 55.0):
        assert aim.at_head_s(elapsed, UNIFORM, INTERVAL) == INTERVAL


def test_gaps_inside_the_distribution_are_not_skipped() -> None:
    """Half end by 5 s, half at 30 s or later: at 6 s the next poll still comes an interval
    later. Skipping to 30 s would trust the start estimate, which a queue of few generators
    gets wrong by seconds."""
    gens = Generations([4.0 + i / 100 for i in range(50)] + [30.0 + i / 10 for i in range(50)])
    assert aim.at_head_s(6.0, gens, INTERVAL) == INTERVAL
    # Before the earliest could end, the wait runs to an interval after they could.
    assert aim.at_head_s(1.0, gens, INTERVAL) == pytest.approx(4.0 - 1.0 + INTERVAL)


def test_past_every_generation_seen_the_schedule_takes_over() -> None:
    assert aim.at_head_s(61.0, UNIFORM, INTERVAL) is None
    head = schedule.Progress(0, at_head_s=61.0)
    assert (
        aim.wanted_s(head, generating_s=61.0, s_per_place=0.4, gens=UNIFORM, interval_s=3) is None
    )


def test_a_queued_job_waits_at_least_for_the_earliest_generations() -> None:
    # Near the head: it has not started, so nothing can end within 20 s.
    wait = aim.queued_s(5, 0.4, UNIFORM, INTERVAL)
    assert wait is not None
    assert 20.0 + INTERVAL <= wait <= 21.0 + INTERVAL
    # Far back: the schedule's own rule, half the time to the head, is longer.
    assert aim.queued_s(300, 0.4, UNIFORM, INTERVAL) == pytest.approx(
        schedule.ARRIVAL_FRACTION * 300 * 0.4
    )


def test_queued_without_generation_times_the_schedule_decides() -> None:
    assert aim.queued_s(40, 0.5, Generations([]), INTERVAL) is None


def test_the_jobs_own_queue_speed_stands_in_for_the_fleets() -> None:
    moved = schedule.Progress(100, first_position=200, since_first_s=50.0)  # 0.5 s a place
    wait = aim.wanted_s(moved, generating_s=None, s_per_place=None, gens=UNIFORM, interval_s=3)
    assert wait == pytest.approx(schedule.ARRIVAL_FRACTION * 100 * 0.5)


@given(
    elapsed=st.floats(min_value=-10, max_value=200),
    position=st.one_of(st.none(), st.integers(min_value=0, max_value=5000)),
    speed=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    samples=st.lists(st.floats(min_value=0, max_value=1000), max_size=40),
    interval=st.floats(min_value=0.05, max_value=30),
    extra=st.floats(min_value=0, max_value=600),
    rand=st.floats(min_value=0, max_value=1),
)
def test_an_aimed_wait_keeps_the_floor_cap_and_jitter(
    elapsed: float,
    position: int | None,
    speed: float | None,
    samples: list[float],
    interval: float,
    extra: float,
    rand: float,
) -> None:
    """Whatever was learned, the next poll comes no sooner than the interval less its jitter
    and no later than the cap: learning moves polls within the settings, never outside them."""
    progress = schedule.Progress(position, at_head_s=max(0.0, elapsed))
    aimed = aim.wanted_s(
        progress,
        generating_s=elapsed,
        s_per_place=speed,
        gens=Generations(samples),
        interval_s=interval,
    )
    cap = interval + extra
    delay = schedule.next_poll_delay_s(
        progress,
        interval_s=interval,
        max_interval_s=cap,
        now=0.0,
        deadline_at=1e9,
        rand=lambda: rand,
        aimed_s=aimed,
    )
    assert delay is not None
    assert interval * (1 - schedule.JITTER) - 1e-9 <= delay <= cap


def test_an_aimed_wait_is_jittered_by_a_share_of_one_interval_only() -> None:
    def delay(rand: float) -> float | None:
        return schedule.next_poll_delay_s(
            schedule.Progress(0),
            interval_s=INTERVAL,
            max_interval_s=30.0,
            now=0.0,
            deadline_at=1e9,
            rand=lambda: rand,
            aimed_s=23.0,
        )

    assert delay(0.0) == pytest.approx(23.0)
    assert delay(1.0) == pytest.approx(23.0 - schedule.AIM_JITTER * INTERVAL)


def test_a_non_finite_aim_counts_as_none() -> None:
    common = {"interval_s": 3.0, "max_interval_s": 30.0, "now": 0.0, "deadline_at": 1e9}
    progress = schedule.Progress(0, at_head_s=5.0)
    plain = schedule.next_poll_delay_s(progress, rand=lambda: 0.5, **common)
    for bad in (float("nan"), float("inf")):
        aimed = schedule.next_poll_delay_s(progress, rand=lambda: 0.5, aimed_s=bad, **common)
        assert aimed == plain
