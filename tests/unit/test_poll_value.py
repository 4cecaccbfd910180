"""Which waiting polls get the budget's tokens (tasks/pacing/poll_value.py): pure, no Redis, no
clock.

The generation times below are made up so each expected chance can be worked out by hand: 30
samples at 2, 4, ..., 60 seconds give an empirical cdf of ``floor(e / 2) / 30``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tasks.pacing import poll_value, schedule
from tasks.pacing.poll_value import Candidate, Generations

NOW = 1_800_000_000.0
# Generation times of 2, 4, ..., 60 s: cdf(e) = floor(e / 2) / 30 for 0 <= e <= 60.
SAMPLES = [2.0 * i for i in range(1, 31)]


def at_head(
    job_id: str, *, started_ago_s: float, seen_ago_s: float, deadline_at: float
) -> Candidate:
    """A job last seen ``seen_ago_s`` ago at the head, generating since ``started_ago_s`` ago."""
    return Candidate(
        job_id=job_id,
        seen_at=NOW - seen_ago_s,
        queue_position=0,
        gen_start_at=NOW - started_ago_s,
        deadline_at=deadline_at,
    )


# --- Generations: the learned distribution, or the prior until there is enough to learn ----------


def test_too_few_samples_use_the_exponential_prior() -> None:
    few = Generations([5.0] * (poll_value.MIN_SAMPLES - 1))
    prior = 1.0 - math.exp(-20.0 / poll_value.PRIOR_GENERATION_S)
    # Learned, nine samples of 5 s would say "surely done by 20 s" (1.0).
    assert 1.0 - few.survival(20.0) == pytest.approx(prior)
    assert 1.0 - Generations([]).survival(20.0) == pytest.approx(prior)


def test_enough_samples_give_the_empirical_survival_with_a_tail() -> None:
    gens = Generations([float(s) for s in range(1, poll_value.MIN_SAMPLES + 1)])  # 1 .. 10
    # Still running after e: the samples longer than e, plus one counted beyond the longest.
    assert gens.survival(0.5) == 1.0
    assert gens.survival(3.0) == pytest.approx(8 / 11)  # at most: a sample equal to it is done
    assert gens.survival(3.5) == pytest.approx(8 / 11)
    assert gens.survival(10.0) == pytest.approx(1 / 11)
    # Past the longest the last share decays with TAIL_S: never 0, so such a job still ranks.
    past = gens.survival(10.0 + poll_value.TAIL_S)
    assert past == pytest.approx(math.exp(-1) / 11)
    assert 0 < gens.survival(1e3) < past


def test_unusable_samples_are_dropped_and_do_not_count_towards_learning() -> None:
    junk = [math.nan, math.inf, -math.inf, -1.0]
    nine = [float(s) for s in range(1, poll_value.MIN_SAMPLES)]
    # Nine usable samples plus junk: still the prior.
    assert Generations(nine + junk).survival(3.0) == pytest.approx(math.exp(-3.0 / 20.0))
    ten = Generations([*junk, *nine, 10.0])
    assert ten.survival(3.0) == pytest.approx(8 / 11)


@pytest.mark.parametrize("elapsed_s", [0.0, -5.0])
def test_nothing_is_done_before_it_starts(elapsed_s: float) -> None:
    assert Generations([]).survival(elapsed_s) == 1.0
    assert Generations(SAMPLES).survival(elapsed_s) == 1.0


# --- generation_start and done_chance -----------------------------------------------------------


def test_a_job_never_seen_is_as_likely_as_not() -> None:
    never = Candidate("new", seen_at=None, queue_position=None, deadline_at=NOW + 900)
    assert poll_value.generation_start(never, NOW) is None
    assert poll_value.done_chance(never, NOW, Generations(SAMPLES)) == 0.5
    assert poll_value.done_chance(never, NOW, Generations([])) == 0.5


def test_a_queued_job_starts_after_the_places_ahead_at_the_measured_speed() -> None:
    # First seen at place 60, 100 s later at place 50: 10 s a place, 50 places still ahead.
    queued = Candidate(
        "q", seen_at=NOW, queue_position=50, first_position=60, first_seen_at=NOW - 100
    )
    assert poll_value.generation_start(queued, NOW) == pytest.approx(NOW + 500)
    # Not measured yet: the prior speed.
    fresh = Candidate("f", seen_at=NOW, queue_position=7)
    assert poll_value.generation_start(fresh, NOW) == pytest.approx(
        NOW + 7 * schedule.PRIOR_S_PER_PLACE
    )


def test_a_job_at_the_head_started_when_estimated_else_when_seen() -> None:
    estimated = Candidate("e", seen_at=NOW - 5, queue_position=0, gen_start_at=NOW - 40)
    assert poll_value.generation_start(estimated, NOW) == NOW - 40
    unknown = Candidate("u", seen_at=NOW - 5, queue_position=None)
    assert poll_value.generation_start(unknown, NOW) == NOW - 5


def test_done_chance_is_the_conditional_chance_of_finishing_since_last_seen() -> None:
    gens = Generations(SAMPLES)
    job = at_head("a", started_ago_s=40, seen_ago_s=5, deadline_at=NOW + 900)
    # Elapsed 35 s when seen, 40 s now: 13 of 30 samples were longer then, 10 now; with one
    # more counted beyond the longest, 14/31 still ran then and 11/31 now.
    stale = poll_value.STALE_VALUE * 5 / poll_value.STALE_S
    assert poll_value.done_chance(job, NOW, gens) == pytest.approx(1 - 11 / 14 + stale)


def test_a_job_long_at_the_head_beats_one_that_just_got_there_and_both_beat_one_far_back() -> None:
    gens = Generations(SAMPLES)
    # The deadlines favour the reverse order, so only the chances can put them right.
    long_at_head = at_head("long", started_ago_s=40, seen_ago_s=5, deadline_at=NOW + 900)
    just_there = at_head("just", started_ago_s=5, seen_ago_s=5, deadline_at=NOW + 800)
    far_back = Candidate(
        "far",
        seen_at=NOW - 5,
        queue_position=50,
        first_position=60,
        first_seen_at=NOW - 105,
        deadline_at=NOW + 700,
    )
    chances = {
        c.job_id: poll_value.done_chance(c, NOW, gens) for c in (long_at_head, just_there, far_back)
    }
    assert chances["long"] > chances["just"] > chances["far"]
    # Far back it starts in ~8 minutes: only the staleness term is left.
    assert chances["far"] == pytest.approx(poll_value.STALE_VALUE * 5 / poll_value.STALE_S)

    ranked = poll_value.rank([far_back, just_there, long_at_head], NOW, gens)
    assert [c.job_id for c in ranked] == ["long", "just", "far"]


def test_equal_chances_go_oldest_first() -> None:
    gens = Generations(SAMPLES)
    young = Candidate("young", seen_at=None, queue_position=None, deadline_at=NOW + 900)
    old = Candidate("old", seen_at=None, queue_position=None, deadline_at=NOW + 100)
    undated = Candidate("undated", seen_at=None, queue_position=None)
    ranked = poll_value.rank([undated, young, old], NOW, gens)
    assert [c.job_id for c in ranked] == ["old", "young", "undated"]


@pytest.mark.parametrize(
    "samples", [[], [30.0] * (poll_value.MIN_SAMPLES - 1)], ids=["none", "few"]
)
@pytest.mark.parametrize("started_ago_s", [60.0, 900.0])
def test_the_prior_is_memoryless(samples: list[float], started_ago_s: float) -> None:
    """Under the exponential prior (no or too few samples), the time already spent at the head
    says nothing about the next seconds: equal gaps since last seen give equal chances, even
    15 minutes in, where 1 - cdf is below a double's resolution of 1."""
    prior = Generations(samples)
    long_at_head = at_head("long", started_ago_s=started_ago_s, seen_ago_s=5, deadline_at=NOW + 900)
    just_there = at_head("just", started_ago_s=5, seen_ago_s=5, deadline_at=NOW + 800)
    a = poll_value.done_chance(long_at_head, NOW, prior)
    b = poll_value.done_chance(just_there, NOW, prior)
    stale = poll_value.STALE_VALUE * 5 / poll_value.STALE_S
    assert a == pytest.approx(b, abs=1e-9)
    assert a == pytest.approx(1 - math.exp(-5 / poll_value.PRIOR_GENERATION_S) + stale)


def test_a_long_unseen_job_gets_the_staleness_term_and_no_more() -> None:
    gens = Generations(SAMPLES)
    far = Candidate(
        "far", seen_at=NOW - 10 * poll_value.STALE_S, queue_position=10_000, first_position=10_000
    )
    # Queued far back (the queue has not moved): no chance, but the full staleness term,
    # enough to go ahead of jobs with no chance that were seen recently.
    assert poll_value.done_chance(far, NOW, gens) == pytest.approx(poll_value.STALE_VALUE)


# --- share: tokens between waiting polls and waiting submits -------------------------------------


def test_submits_get_their_share() -> None:
    assert poll_value.share(10, 100, 100, submit_share=0.3, draw=0.0) == (7, 3)
    assert poll_value.share(10, 100, 100, submit_share=0.5, draw=0.0) == (5, 5)
    assert poll_value.share(10, 100, 100, submit_share=1.0, draw=0.0) == (0, 10)


@pytest.mark.parametrize("submit_share", [0.3, 0.5, 0.75])
def test_the_draw_decides_the_fractional_token(submit_share: float) -> None:
    """One token at a time (a releaser that sees a single free token), over evenly spread
    draws, submits get ``submit_share`` of them."""
    draws = [(i + 0.5) / 100 for i in range(100)]  # evenly spread, none on a boundary
    to_submits = sum(poll_value.share(1, 5, 5, submit_share=submit_share, draw=d)[1] for d in draws)
    assert to_submits == round(100 * submit_share)
    # And with 3 tokens: 0.9 / 1.5 / 2.25 on average, never more than ceil of it.
    shares = [poll_value.share(3, 5, 5, submit_share=submit_share, draw=d)[1] for d in draws]
    assert sum(shares) / len(shares) == pytest.approx(3 * submit_share)
    assert set(shares) <= {math.floor(3 * submit_share), math.ceil(3 * submit_share)}


def test_what_one_kind_leaves_goes_to_the_other() -> None:
    # Two polls waiting: the submits take the rest.
    assert poll_value.share(10, 2, 100, submit_share=0.3, draw=0.0) == (2, 8)
    # One submit waiting: the polls take the rest.
    assert poll_value.share(10, 100, 1, submit_share=0.5, draw=0.99) == (9, 1)
    # Nothing to share, or no one to share it with.
    assert poll_value.share(0, 5, 5, submit_share=0.5, draw=0.99) == (0, 0)
    assert poll_value.share(5, 0, 0, submit_share=0.5, draw=0.5) == (0, 0)


@given(
    tokens=st.integers(min_value=0, max_value=50),
    polls=st.integers(min_value=0, max_value=60),
    submits=st.integers(min_value=0, max_value=60),
    submit_share=st.floats(min_value=0.01, max_value=1.0),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
@example(tokens=1, polls=0, submits=0, submit_share=1.0, draw=0.999999)
# A draw just below 1 rounds tokens * share + draw up to tokens + 1 (found by Hypothesis).
@example(tokens=1, polls=0, submits=2, submit_share=1.0, draw=0.9999999999999999)
@example(tokens=7, polls=1, submits=100, submit_share=1.0, draw=0.999999)
def test_share_never_gives_more_than_there_is_and_wastes_nothing(
    tokens: int, polls: int, submits: int, submit_share: float, draw: float
) -> None:
    to_polls, to_submits = poll_value.share(
        tokens, polls, submits, submit_share=submit_share, draw=draw
    )
    assert 0 <= to_polls <= polls
    assert 0 <= to_submits <= submits
    assert to_polls + to_submits == min(tokens, polls + submits)
