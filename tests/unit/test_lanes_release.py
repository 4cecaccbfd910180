"""The releaser's lanes (tasks/sweeps/granting.py with tasks/pacing/fairness.py) in-process,
against a real Redis and a fake clock: who gets the budget's tokens when a bulk backlog, another
tenant and an interactive app wait in the one wait set; the lanes' tags kept in Redis across
ticks and across a hand-over to another releaser."""

from __future__ import annotations

import pytest
import redis

from tasks import names, steps
from tasks.nanogpt import validation
from tasks.record.jobs import WAIT_KEY, Priority
from tasks.sweeps import granting
from tests.unit.test_budget_steps import (  # noqa: F401 (client: the fixture)
    ENV,
    MODEL,
    World,
    client,
    new_id,
    parked,
    run_sent,
    world,
)


@pytest.fixture
def w4(client: redis.Redis) -> World:  # noqa: F811 (the fixture imported above)
    """Four tokens that come back at 20 a second."""
    client.delete(granting.LEADER_KEY)
    return world(client, {**ENV, "TTS_UPSTREAM_RATE": "20", "TTS_UPSTREAM_BURST": "4"})


def waiting_submit(w: World, tenant: str | None, priority: Priority) -> str:
    """A caller's submit that found no budget and waits in line (by when it was accepted)."""
    task_id = new_id()
    request = validation.submit_request("Hello", MODEL)
    lane = validation.Lane(tenant, priority)
    assert steps.accept_submit(w.ctx, task_id, request, None, owner=task_id, lane=lane)
    now = w.clock()
    assert w.ctx.jobs.defer_submit(
        task_id, task_id, deliveries=1, check_at=now + 900, queued_at=now
    )
    w.clock.advance(0.001)  # in line one after the other
    return task_id


def granted_submits(w: World, *, run: bool = False) -> list[str]:
    """The submits the releaser sent (``run``: and run them, each spending its grant)."""
    sent, w.outbox.sent = list(w.outbox.sent), []
    if run:
        for s in sent:
            w.run(s)
        w.outbox.sent = [s for s in w.outbox.sent if s.name == names.SUBMIT_TTS]
    return [str(s.task_id) for s in sent if s.name == names.SUBMIT_TTS]


def test_an_interactive_submit_overtakes_a_bulk_backlog(w4: World) -> None:
    w = w4
    bulk = [waiting_submit(w, "importer", Priority.BULK) for _ in range(50)]
    app = waiting_submit(w, "app", Priority.INTERACTIVE)  # the newest in line

    assert granting.release(w.ctx, rand=lambda: 0.5, state=granting.Releasing()) == 4

    got = granted_submits(w)
    assert got[0] == app
    assert got[1:] == bulk[:3]  # the others' oldest first
    assert w.client.zscore(WAIT_KEY, app) is None


def test_the_same_backlog_in_one_lane_is_served_oldest_first(w4: World) -> None:
    """Without lanes (everyone in the default one), line order decides, as before issue 22:
    the newest submit waits for the backlog."""
    w = w4
    backlog = [waiting_submit(w, None, Priority.NORMAL) for _ in range(50)]
    last = waiting_submit(w, None, Priority.NORMAL)

    assert granting.release(w.ctx, rand=lambda: 0.5, state=granting.Releasing()) == 4

    assert granted_submits(w) == backlog[:4]
    assert w.client.zscore(WAIT_KEY, last) is not None
    assert not w.client.exists(granting.LANES_KEY)  # one lane: nothing to count


def test_an_interactive_poll_comes_before_bulk_submits(w4: World) -> None:
    w = w4
    now = w.clock()
    [waiting_submit(w, "importer", Priority.NORMAL) for _ in range(20)]
    jid, _ = parked(w, due_in_s=-1, deadline_in_s=900, seen_at=now - 5)
    w.client.hset(f"tts:job:{jid}", mapping={"tenant": "app", "priority": "interactive"})

    assert granting.release(w.ctx, rand=lambda: 0.5, state=granting.Releasing()) == 4

    polls = [s.kwargs["job_id"] for s in w.outbox.sent if s.name == names.POLL_TTS]
    assert polls == [jid]
    assert w.outbox.sent[0].name == names.POLL_TTS


def test_tenants_share_across_ticks_and_across_a_hand_over(w4: World) -> None:
    """One token a tick: the tags in Redis alternate the two tenants; a new releaser (the old
    one stopped) reads them and goes on alternating, instead of starting again."""
    w = w4
    bulk = {waiting_submit(w, "importer", Priority.NORMAL) for _ in range(40)}
    shop = {waiting_submit(w, "shop", Priority.NORMAL) for _ in range(10)}
    releaser = granting.Releasing()
    assert granting.release(w.ctx, rand=lambda: 0.5, state=releaser) == 4  # the burst
    order = granted_submits(w, run=True)
    for tick in range(8):
        if tick == 3:  # shop is next; the releaser stops, another takes the lock over
            w.client.delete(granting.LEADER_KEY)
            releaser = granting.Releasing()
        w.clock.advance(0.05)  # one token back
        assert granting.release(w.ctx, rand=lambda: 0.5, state=releaser) == 1
        order += granted_submits(w, run=True)
    tenants = ["bulk" if job in bulk else "shop" if job in shop else "?" for job in order]
    assert tenants == ["bulk", "shop"] * 6
    assert w.client.ttl(granting.LANES_KEY) > 0


def test_the_released_steps_still_spend_their_grants(w4: World) -> None:
    """Granted by lanes, each step calls NanoGPT with its grant: no more calls than tokens."""
    w = w4
    [waiting_submit(w, "importer", Priority.BULK) for _ in range(10)]
    [waiting_submit(w, "app", Priority.INTERACTIVE) for _ in range(2)]
    assert granting.release(w.ctx, rand=lambda: 0.5, state=granting.Releasing()) == 4
    run_sent(w)
    assert w.upstream.posts == 4
    assert w.ctx.budget.free()[0] == 0
