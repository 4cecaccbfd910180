"""The one wait path against a real Redis: parked with the lease move, released once, never
lost; submits in the same set."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tasks import names
from tasks.record.jobs import DUE_KEY, POLLS_FROM, WAIT_KEY, JobStore, submit_score
from tasks.record.states import Status, Step
from tasks.steps.context import Ctx
from tasks.sweeps import granting, reconcile
from tests.support.ctx import Outbox, make_ctx


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    # The Redis is shared by the unit tests of this process: start with no waiting job and no
    # fleet releaser (another test's releaser keeps the lock for LEADER_TTL_S after its tick).
    redis_client.delete(WAIT_KEY, granting.LEADER_KEY)
    return JobStore(redis_client, ttl_s=60)


def polling_job(store: JobStore, **fields: object) -> tuple[str, str]:
    """A job whose first poll ran and whose second is parked ``due_in`` seconds from now."""
    due_in = float(fields.pop("due_in", 0.0))  # type: ignore[arg-type]
    jid = f"p-{uuid.uuid4().hex}"
    now = time.time()
    token = store.start_chain(
        jid, {"run_id": jid, "model": "m", **fields}, deadline_at=now + 60, check_at=now + 60
    )
    assert token is not None
    assert store.advance(jid, token, 0, {}, check_at=now + 90, park_at=now + due_in)
    return jid, token


def test_advance_parks_the_next_poll_atomically(store: JobStore, redis_client: redis.Redis) -> None:
    jid, token = polling_job(store, due_in=5)
    assert redis_client.zscore(WAIT_KEY, jid) == pytest.approx(time.time() + 5, abs=1)
    # A stale poll moves nothing, parks nothing.
    other = f"p-{uuid.uuid4().hex}"
    assert not store.advance(other, token, 0, {}, check_at=time.time(), park_at=time.time())
    assert redis_client.zscore(WAIT_KEY, other) is None


def test_only_due_polls_are_released_with_their_lease(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """With the budget off (unlimited tokens), every due poll is taken, none early, each once."""
    due, token = polling_job(store, cost=0.25, payment_source="XNO", is_api_request=False)
    polling_job(store, due_in=60)
    ctx, outbox = make_ctx(redis_client)

    assert granting.release(ctx, state=granting.Releasing()) == 1

    assert [(s.name, s.args, s.kwargs) for s in outbox.sent] == [
        (names.POLL_TTS, (due, "m"), {"job_id": due, "lease": token, "seq": 1})
    ]
    assert granting.release(ctx) == 0  # taken: never released twice
    assert len(outbox.sent) == 1


def test_concurrent_releasers_release_each_poll_once(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Taking is atomic: releasers that race (a lock handed over mid-tick) never send one poll
    twice. Unlimited tokens (budget off), small batches, four threads without the lock."""
    ids = {polling_job(store)[0] for _ in range(200)}
    outbox = Outbox()
    ctxs = [make_ctx(redis_client, outbox=outbox)[0] for _ in range(4)]

    def drain(ctx: Ctx) -> None:
        while granting.release(ctx):
            pass

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(drain, ctxs))
    sent = [s.kwargs["job_id"] for s in outbox.sent]
    assert sorted(sent) == sorted(ids)


def test_an_ended_job_releases_nothing(store: JobStore, redis_client: redis.Redis) -> None:
    jid, token = polling_job(store)
    redis_client.zadd(WAIT_KEY, {"gone-job": 1})  # expired hash: nothing to poll
    assert store.settle(jid, {"type": "tts.failed"}, check_at=time.time(), lease=(token, 1))
    assert redis_client.zscore(WAIT_KEY, jid) is None  # settling unparks
    redis_client.zadd(WAIT_KEY, {jid: 1})  # even if it were still parked
    ctx, outbox = make_ctx(redis_client)
    assert granting.release(ctx) == 0
    assert outbox.sent == []
    assert redis_client.zcard(WAIT_KEY) == 0  # both taken off, neither sent


def test_a_failed_publish_leaves_the_job_to_the_reconciler(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Taken but not published (the broker gone): its check time is a grace away, so the
    reconciler re-sends it then; nothing lost, nothing sent twice."""
    jid, token = polling_job(store)

    def broken(*_: object, **__: object) -> None:
        raise ConnectionError("broker gone")

    ctx, _ = make_ctx(redis_client, outbox=broken)  # type: ignore[arg-type]
    now = time.time()
    with pytest.raises(ConnectionError):
        granting.release(ctx)
    assert redis_client.zscore(WAIT_KEY, jid) is None
    assert redis_client.zscore(DUE_KEY, jid) == pytest.approx(now + 30, abs=1)

    ctx, outbox = make_ctx(redis_client)
    job = store.get(jid)
    assert job is not None
    assert reconcile.resend(ctx, job, Step.POLL, now=now + 31)
    assert [s.kwargs for s in outbox.sent] == [{"job_id": jid, "lease": token, "seq": 1}]


def test_unlimited_tokens_release_batch_after_batch(
    store: JobStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the budget off a tick takes a batch, and a full batch says "more may be due"."""
    monkeypatch.setattr(granting, "UNLIMITED_BATCH", 3)
    ids = [polling_job(store)[0] for _ in range(5)]
    ctx, outbox = make_ctx(redis_client)
    assert granting.release(ctx) == 3
    assert granting.release(ctx) == 2
    assert sorted(s.kwargs["job_id"] for s in outbox.sent) == sorted(ids)


def test_reconciler_parks_a_poll_that_must_wait(store: JobStore, redis_client: redis.Redis) -> None:
    jid, _ = polling_job(store, due_in=0)
    redis_client.zrem(WAIT_KEY, jid)  # the release happened, the message was lost
    later = time.time() + 20
    store.update(jid, {"not_before": later})
    job = store.get(jid)
    assert job is not None

    ctx, outbox = make_ctx(redis_client)
    reconcile.resend(ctx, job, Step.POLL, now=time.time())

    assert outbox.sent == []  # parked, not sent

    assert redis_client.zscore(WAIT_KEY, jid) == pytest.approx(later)


def test_a_parked_poll_is_watched_at_its_deadline_until_released(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Issue 19: parked, a job is out of the reconciler's way (its check time is its deadline);
    taking it puts it back on the watch a grace from now, in the same script, so a releaser
    that dies before publishing leaves it to the reconciler soon."""
    ctx, outbox = make_ctx(redis_client, env={"TTS_RECOVERY_GRACE": "7"})
    jid, token = polling_job(store)
    job = store.get(jid)
    assert job is not None
    assert store.defer_poll(
        jid, token, 1, due_at=time.time(), deliveries=1, deadline_at=job.deadline_at or 0.0
    )
    assert redis_client.zscore(DUE_KEY, jid) == job.deadline_at

    now = time.time()
    assert granting.release(ctx) == 1
    assert redis_client.zscore(DUE_KEY, jid) == pytest.approx(now + 7, abs=1)
    assert [s.kwargs for s in outbox.sent] == [{"job_id": jid, "lease": token, "seq": 1}]


def test_without_a_budget_the_submits_that_waited_for_one_are_sent(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Issue 19: a submit parked while the budget was on, then ``TTS_UPSTREAM_RATE=0``: the
    releaser sends it under its own task id (only a submit still waiting for its POST), on the
    same path as polls, with unlimited tokens."""
    ctx, outbox = make_ctx(redis_client, env={"TTS_UPSTREAM_RATE": "0"})
    now = time.time()
    waiting, ended = (f"s-{uuid.uuid4().hex}" for _ in range(2))
    for jid in (waiting, ended):
        fields = {
            "status": Status.SUBMITTING,
            "owner": jid,
            "request": {"text": "Hello", "model": "m"},
            "deadline_at": now + 600,
        }
        assert store.create(jid, fields, ttl_s=600, check_at=now + 30)
        assert store.defer_submit(jid, jid, deliveries=1, check_at=now + 600, queued_at=now)
    assert store.settle(ended, {"type": "tts.failed"}, check_at=now)
    redis_client.zadd(WAIT_KEY, {ended: submit_score(now)})  # even if it were still in line

    assert granting.release(ctx) == 1
    assert [(s.name, s.args, s.task_id) for s in outbox.sent] == [
        (names.SUBMIT_TTS, ("Hello", "m"), waiting)
    ]
    assert redis_client.zcard(WAIT_KEY) == 0
    assert redis_client.zscore(DUE_KEY, waiting) == pytest.approx(now + 30, abs=1)


def test_a_waiting_submit_waits_in_the_one_wait_set_before_every_poll(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Issue 21: a submit that found no budget waits in ``tts:wait`` with the polls, in line
    by when it was accepted, scored below every poll; the reconciler sees it parked."""
    now = time.time()
    poll_id, _ = polling_job(store)
    jid = f"s-{uuid.uuid4().hex}"
    fields = {"status": Status.SUBMITTING, "owner": jid, "deadline_at": now + 600}
    assert store.create(jid, fields, ttl_s=600, check_at=now + 30)
    assert store.defer_submit(jid, jid, deliveries=1, check_at=now + 600, queued_at=now - 5)
    assert redis_client.zscore(WAIT_KEY, jid) == submit_score(now - 5) < POLLS_FROM
    assert redis_client.zrange(WAIT_KEY, 0, -1) == [jid, poll_id]
    assert store.parked(jid)
    assert redis_client.zscore(DUE_KEY, jid) == now + 600  # out of the reconciler's way
