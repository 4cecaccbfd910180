"""Parked polls against a real Redis: parked with the lease move, released once, never lost."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tasks import names
from tasks.record.jobs import DUE_KEY, SUBMIT_WAIT_KEY, WAIT_KEY, Job, JobStore
from tasks.record.states import Status, Step
from tasks.sweeps import parking, reconcile
from tests.support.ctx import make_ctx


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    redis_client.delete(WAIT_KEY)
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


def test_only_due_polls_are_released_with_their_lease(store: JobStore) -> None:
    due, token = polling_job(store, cost=0.25, payment_source="XNO", is_api_request=False)
    polling_job(store, due_in=60)
    releaser = parking.Releaser(store._redis, recovery_grace_s=30)

    released = releaser.pop(time.time(), limit=10)[1]

    assert [j.job_id for j in released] == [due]
    job = released[0]
    assert job.holds(token, 1)
    assert (job.run_id, job.model, job.cost, job.payment_source) == (due, "m", 0.25, "XNO")
    assert job.is_api_request is False
    assert releaser.pop(time.time(), limit=10)[1] == []  # popped: never released twice


def test_concurrent_releasers_release_each_poll_once(store: JobStore) -> None:
    ids = {polling_job(store)[0] for _ in range(200)}
    releasers = [parking.Releaser(store._redis, recovery_grace_s=30) for _ in range(4)]

    def drain(r: parking.Releaser) -> list[str]:
        got: list[str] = []
        while batch := r.pop(time.time(), limit=7)[1]:
            got += [j.job_id for j in batch]
        return got

    with ThreadPoolExecutor(4) as pool:
        results = [j for got in pool.map(drain, releasers) for j in got]
    assert sorted(results) == sorted(ids)


def test_an_ended_job_releases_nothing(store: JobStore, redis_client: redis.Redis) -> None:
    jid, token = polling_job(store)
    redis_client.zadd(WAIT_KEY, {"gone-job": 0})  # expired hash: nothing to poll
    assert store.settle(jid, {"type": "tts.failed"}, check_at=time.time(), lease=(token, 1))
    assert redis_client.zscore(WAIT_KEY, jid) is None  # settling unparks
    redis_client.zadd(WAIT_KEY, {jid: 0})  # even if it were still parked
    assert parking.Releaser(redis_client, recovery_grace_s=30).pop(time.time(), limit=10)[1] == []


def test_a_failed_publish_parks_the_rest_again(store: JobStore, redis_client: redis.Redis) -> None:
    ids = [polling_job(store)[0] for _ in range(3)]
    sent: list[str] = []

    def send(job: Job) -> None:
        if len(sent) == 1:
            raise ConnectionError("broker gone")
        sent.append(job.job_id)

    releaser = parking.Releaser(redis_client, recovery_grace_s=30)
    with pytest.raises(ConnectionError):
        parking.release(releaser, send, now=time.time(), limit=10)
    parked = set(redis_client.zrange(WAIT_KEY, 0, -1))
    assert len(sent) == 1
    assert parked == set(ids) - set(sent)  # nothing lost, nothing sent twice

    again = parking.release(releaser, lambda j: sent.append(j.job_id), now=time.time(), limit=10)
    assert again == 2
    assert sorted(sent) == sorted(ids)


def test_release_counts_what_it_took_not_only_what_it_sent(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """A full batch of ended jobs must not read as "nothing more is due" to the batch loop."""
    live = polling_job(store)[0]
    redis_client.zadd(WAIT_KEY, {"gone-1": 0, "gone-2": 0})  # before the live one, expired
    releaser = parking.Releaser(redis_client, recovery_grace_s=30)
    sent: list[str] = []

    assert parking.release(releaser, lambda j: sent.append(j.job_id), now=time.time(), limit=2) == 2
    assert sent == []  # a full batch, nothing in it to send: the caller must pop again
    assert parking.release(releaser, lambda j: sent.append(j.job_id), now=time.time(), limit=2) == 1
    assert sent == [live]


def test_reconciler_parks_a_poll_that_must_wait(store: JobStore, redis_client: redis.Redis) -> None:
    jid, _ = polling_job(store, due_in=0)
    redis_client.zrem(WAIT_KEY, jid)  # the release happened, the message was lost
    later = time.time() + 20
    store.update(jid, {"not_before": later})
    job = store.get(jid)
    assert job is not None

    ctx, outbox = make_ctx(redis_client, env={"TTS_POLL_WAIT": "redis"})
    reconcile.resend(ctx, job, Step.POLL, now=time.time())

    assert outbox.sent == []  # parked, not sent with a countdown

    assert redis_client.zscore(WAIT_KEY, jid) == pytest.approx(later)


def test_a_parked_poll_is_watched_at_its_deadline_until_released(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Issue 19: parked, a job is out of the reconciler's way (its check time is its deadline);
    the pop puts it back on the watch a grace from now, in the same script, so a releaser that
    dies before publishing leaves it to the reconciler soon."""
    ctx, outbox = make_ctx(redis_client, env={"TTS_POLL_WAIT": "redis"})
    jid, token = polling_job(store)
    job = store.get(jid)
    assert job is not None
    assert store.defer_poll(
        jid, token, 1, due_at=time.time(), deliveries=1, deadline_at=job.deadline_at or 0.0
    )
    assert redis_client.zscore(DUE_KEY, jid) == job.deadline_at

    now = time.time()
    releaser = parking.Releaser(redis_client, recovery_grace_s=7)
    assert parking.release_all(releaser, ctx.dispatch, now=now, limit=10) == 1
    assert redis_client.zscore(DUE_KEY, jid) == pytest.approx(now + 7)
    assert [s.kwargs for s in outbox.sent] == [{"job_id": jid, "lease": token, "seq": 1}]


def test_without_a_budget_the_submits_that_waited_for_one_are_sent(
    store: JobStore, redis_client: redis.Redis
) -> None:
    """Issue 19: a submit parked while the budget was on, then ``TTS_UPSTREAM_RATE=0``: the
    releaser sends it under its own task id (only a submit still waiting for its POST)."""
    redis_client.delete(SUBMIT_WAIT_KEY)
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
    redis_client.zadd(SUBMIT_WAIT_KEY, {ended: now})  # even if it were still in line

    releaser = parking.Releaser(redis_client, recovery_grace_s=30)
    assert parking.release_all(releaser, ctx.dispatch, now=now, limit=10) == 2
    assert [(s.name, s.args, s.task_id) for s in outbox.sent] == [
        (names.SUBMIT_TTS, ("Hello", "m"), waiting)
    ]
    assert redis_client.zcard(SUBMIT_WAIT_KEY) == 0
    assert redis_client.zscore(DUE_KEY, waiting) == pytest.approx(now + 30)
