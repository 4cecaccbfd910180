"""The lanes' rule (tasks/pacing/fairness.py), pure: given the waiting jobs of each lane and the
tags kept so far, which get the tokens, over one tick and over many."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from tasks.pacing import fairness
from tasks.pacing.fairness import POLL, SUBMIT, Lane, Shares

SHARES = Shares(interactive_share=0.5, bulk_share=0.2, submit_share=0.5)


def jobs(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def run(
    waiting: Mapping[Lane, Sequence[str]],
    ticks: int,
    per_tick: int,
    shares: Shares = SHARES,
    tags: dict[str, float] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """``ticks`` releases of ``per_tick`` tokens, each granting all it was offered, the tags
    carried from one to the next as the releaser carries them in Redis."""
    queues = {lane: list(ids) for lane, ids in waiting.items()}
    lane_of = {job: lane for lane, ids in waiting.items() for job in ids}
    tags = dict(tags or {})
    served: list[str] = []
    for _ in range(ticks):
        chosen = fairness.order(queues, per_tick, tags, shares)
        tags = fairness.prune(fairness.charge(tags, [lane_of[j] for j in chosen], shares))
        for job in chosen:
            queues[lane_of[job]].remove(job)
        served += chosen
    return served, tags


def counts(served: Sequence[str]) -> Counter[str]:
    return Counter(job.rstrip("0123456789") for job in served)


def test_one_lane_is_served_in_its_own_order() -> None:
    lane = Lane("normal", "", POLL)
    assert fairness.order({lane: ["c", "a", "b"]}, 2, {}, SHARES) == ["c", "a"]


def test_an_interactive_job_goes_first_even_behind_a_bulk_backlog() -> None:
    waiting = {
        Lane("bulk", "importer", SUBMIT): jobs("bulk", 400),
        Lane("normal", "shop", SUBMIT): jobs("shop", 40),
        Lane("interactive", "app", SUBMIT): ["app0"],
    }
    assert fairness.order(waiting, 4, {}, SHARES)[0] == "app0"


def test_an_interactive_poll_comes_before_bulk_submits() -> None:
    waiting = {
        Lane("normal", "importer", SUBMIT): jobs("bulk", 400),
        Lane("interactive", "app", POLL): ["app0"],
    }
    # The importer has been served for a long time: its tags are far ahead.
    _, tags = run({Lane("normal", "importer", SUBMIT): jobs("old", 100)}, 25, 4)
    assert fairness.order(waiting, 1, tags, SHARES) == ["app0"]


def test_interactive_work_never_takes_more_than_its_share_while_others_wait() -> None:
    waiting = {
        Lane("interactive", "app", SUBMIT): jobs("app", 1000),
        Lane("bulk", "importer", SUBMIT): jobs("bulk", 1000),
    }
    served, _ = run(waiting, 50, 4)
    assert counts(served) == {"app": 100, "bulk": 100}  # 0.5 of 200 each
    shares = Shares(interactive_share=0.8, bulk_share=0.2, submit_share=0.5)
    served, _ = run(waiting, 50, 4, shares)
    assert counts(served) == {"app": 160, "bulk": 40}


def test_an_unused_share_flows_to_the_lanes_that_wait() -> None:
    # Nothing else waits: interactive takes every token; and so does bulk alone.
    served, _ = run({Lane("interactive", "app", SUBMIT): jobs("app", 100)}, 10, 4)
    assert len(served) == 40
    served, _ = run({Lane("bulk", "importer", SUBMIT): jobs("bulk", 100)}, 10, 4)
    assert len(served) == 40
    # Interactive wants 1 token in 10: the rest go to the others.
    waiting = {
        Lane("interactive", "app", SUBMIT): jobs("app", 3),
        Lane("normal", "importer", SUBMIT): jobs("bulk", 100),
    }
    served, _ = run(waiting, 10, 4)
    assert counts(served) == {"app": 3, "bulk": 37}


def test_bulk_takes_its_share_of_the_others_while_normal_work_waits() -> None:
    waiting = {
        Lane("normal", "shop", SUBMIT): jobs("shop", 1000),
        Lane("bulk", "importer", SUBMIT): jobs("bulk", 1000),
    }
    served, _ = run(waiting, 25, 4)
    assert counts(served) == {"shop": 80, "bulk": 20}


def test_tenants_of_one_priority_share_equally_whatever_their_backlogs() -> None:
    waiting = {
        Lane("normal", "importer", SUBMIT): jobs("bulk", 400),
        Lane("normal", "shop", SUBMIT): jobs("shop", 40),
        Lane("normal", "blog", SUBMIT): jobs("blog", 5),
    }
    served, _ = run(waiting, 10, 3)
    assert counts(served) == {"bulk": 13, "shop": 12, "blog": 5}


def test_within_a_tenant_submits_and_polls_share_by_the_submit_share() -> None:
    waiting = {
        Lane("normal", "shop", SUBMIT): jobs("s", 100),
        Lane("normal", "shop", POLL): jobs("p", 100),
    }
    served, _ = run(waiting, 10, 4, Shares(0.5, 0.2, submit_share=0.25))
    assert counts(served) == {"s": 10, "p": 30}
    # Each lane keeps its own order (polls ranked, submits oldest first).
    assert [j for j in served if j.startswith("p")] == jobs("p", 30)


def test_the_tags_carry_fairness_across_ticks_of_one_token() -> None:
    """One token per tick (a releaser that sees one free at a time): without the tags kept
    between ticks the first lane would win every tick."""
    waiting = {
        Lane("normal", "a", SUBMIT): jobs("a", 100),
        Lane("normal", "b", SUBMIT): jobs("b", 100),
    }
    served, _ = run(waiting, 20, 1)
    assert counts(served) == {"a": 10, "b": 10}
    # Dropping the tags between ticks (what a releaser without them would do) is unfair.
    lane_of = {j: lane for lane, ids in waiting.items() for j in ids}
    queues = {lane: list(ids) for lane, ids in waiting.items()}
    forgetful = []
    for _ in range(20):
        [job] = fairness.order(queues, 1, {}, SHARES)
        queues[lane_of[job]].remove(job)
        forgetful.append(job)
    assert counts(forgetful) == {"a": 20}


def test_a_tenant_that_was_idle_gets_no_credit_and_loses_nothing() -> None:
    a, b = Lane("normal", "a", SUBMIT), Lane("normal", "b", SUBMIT)
    # a alone for 50 ticks, then b comes: from then on they alternate.
    _, tags = run({a: jobs("old", 200)}, 50, 4)
    served, _ = run({a: jobs("a", 100), b: jobs("b", 100)}, 5, 4, tags=tags)
    assert counts(served) == {"a": 10, "b": 10}
    assert served[0] == "b0"  # the newcomer starts at once


def test_prune_keeps_only_tags_ahead_of_their_parent() -> None:
    a, b = Lane("normal", "a", SUBMIT), Lane("normal", "b", SUBMIT)
    tags = fairness.charge({}, [b, a, a, a], SHARES)
    pruned = fairness.prune(tags)
    # b, served first and idle since, is behind: as good as absent. The order is the same.
    assert "o/n/b" not in pruned
    assert "o/n/a" in pruned
    waiting = {a: jobs("a", 10), b: jobs("b", 10)}
    assert fairness.order(waiting, 6, pruned, SHARES) == fairness.order(waiting, 6, tags, SHARES)
    # Many tenants served once each: the hash keeps no more than its bound of them.
    many = [Lane("normal", f"t{i}", SUBMIT) for i in range(2000)]
    kept = fairness.prune(fairness.charge({}, many, SHARES))
    assert len([name for name in kept if not name.startswith("v:")]) == fairness.MAX_TAGS


@pytest.mark.parametrize("text", ["nan", "inf", "x", ""])
def test_unreadable_tags_are_left_out(text: str) -> None:
    assert fairness.finite({"o": text, "i": "2.5"}) == {"i": 2.5}
