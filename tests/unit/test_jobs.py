"""The job record's guards, against a real Redis: lease CAS, first outcome wins, notify claim."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tasks.record import jobs
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, JobStore, Watch


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, ttl_s=60)


def new_id() -> str:
    return f"t-{uuid.uuid4().hex}"


def test_one_chain_per_job_under_concurrency(store: JobStore) -> None:
    jid = new_id()
    with ThreadPoolExecutor(10) as pool:
        tokens = list(
            pool.map(
                lambda _: store.start_chain(
                    jid, {"model": "m"}, deadline_at=time.time() + 30, check_at=time.time() + 60
                ),
                range(10),
            )
        )
    winners = [t for t in tokens if t is not None]
    assert len(winners) == 1
    job = store.get(jid)
    assert job is not None
    assert job.holds(winners[0], 0)


def test_stale_poll_cannot_advance(store: JobStore) -> None:
    jid = new_id()
    token = store.start_chain(jid, {}, deadline_at=time.time() + 30, check_at=time.time() + 60)
    assert token is not None
    assert store.advance(jid, token, 0, {"queue_position": 3}, check_at=time.time() + 60)
    assert not store.advance(
        jid, token, 0, {"queue_position": 9}, check_at=time.time() + 60
    )  # redelivered poll 0
    assert not store.advance(jid, "other", 1, {}, check_at=time.time() + 60)  # a different chain
    job = store.get(jid)
    assert job is not None
    assert job.queue_position == 3
    assert job.polls == 1
    assert job.holds(token, 1)


def test_first_outcome_wins(store: JobStore) -> None:
    jid = new_id()
    token = store.start_chain(jid, {}, deadline_at=time.time() + 30, check_at=time.time() + 60)
    assert token is not None
    failed = {"type": "tts.failed", "error": {"code": "TIMEOUT", "message": "m"}}
    assert not store.settle(jid, failed, lease=(token, 5), check_at=1.0)  # not the current poll
    assert store.settle(jid, failed, lease=(token, 0), check_at=1.0)
    assert not store.settle(jid, {"type": "tts.completed", "audio": {}}, check_at=1.0)
    job = store.get(jid)
    assert job is not None
    assert job.status == "failed"
    assert job.outcome == failed
    assert not job.holds(token, 0)


def test_each_outcome_gets_its_own_id(store: JobStore, redis_client: redis.Redis) -> None:
    jid = new_id()
    ids = []
    for _ in range(2):  # the same job id, used again after its record expired
        store.start_chain(jid, {}, deadline_at=time.time() + 30, check_at=time.time() + 60)
        assert store.settle(jid, {"type": "tts.failed", "error": {}}, check_at=1.0)
        settled = store.get(jid)
        assert not store.settle(jid, {"type": "tts.completed", "audio": {}}, check_at=1.0)
        job = store.get(jid)
        assert settled is not None
        assert job is not None
        assert job.outcome_id
        assert job.outcome_id == settled.outcome_id  # a refused settle leaves it alone
        ids.append(job.outcome_id)
        redis_client.delete(KEY_PREFIX + jid)
    assert ids[0] != ids[1]


def test_settle_needs_a_record(store: JobStore) -> None:
    assert not store.settle(new_id(), {"type": "tts.failed", "error": {}}, check_at=1.0)


def test_notify_claim(store: JobStore) -> None:
    jid = new_id()
    store.create(jid, {"status": "downloading"}, ttl_s=30, check_at=Watch.DROP)
    store.settle(jid, {"type": "tts.completed", "audio": {}}, check_at=1.0)
    assert store.claim_notify(jid, "task-a", lease_s=30)
    assert store.claim_notify(jid, "task-a", lease_s=30)  # a retry of the same task
    assert not store.claim_notify(jid, "task-b", lease_s=30)  # a duplicate sender
    store.finish_notify(jid, "delivered")
    assert not store.claim_notify(jid, "task-a", lease_s=30)


def test_expired_claim_is_taken_over(store: JobStore) -> None:
    jid = new_id()
    store.create(jid, {}, ttl_s=30, check_at=Watch.DROP)
    store.settle(jid, {"type": "tts.completed", "audio": {}}, check_at=1.0)
    assert store.claim_notify(jid, "dead-task", lease_s=-1)
    assert store.claim_notify(jid, "task-b", lease_s=30)


def test_public_view_hides_lease(store: JobStore) -> None:
    jid = new_id()
    store.start_chain(jid, {"run_id": "r"}, deadline_at=time.time() + 30, check_at=time.time() + 60)
    job = store.get(jid)
    assert job is not None
    public = job.public()
    assert "token" not in public
    assert "seq" not in public
    assert public["run_id"] == "r"
    assert public["status"] == "polling"


def test_every_transition_moves_the_watch(store: JobStore, redis_client: redis.Redis) -> None:
    def score(jid: str) -> float | None:
        return redis_client.zscore(DUE_KEY, jid)

    jid = new_id()
    token = store.start_chain(jid, {}, deadline_at=time.time() + 30, check_at=100.0)
    assert token is not None
    assert score(jid) == 100.0
    assert store.advance(jid, token, 0, {}, check_at=200.0)
    assert score(jid) == 200.0
    assert not store.advance(jid, token, 0, {}, check_at=999.0)  # a stale poll moves nothing
    assert score(jid) == 200.0
    assert store.settle(jid, {"type": "tts.failed", "error": {}}, lease=(token, 1), check_at=300.0)
    assert score(jid) == 300.0
    assert jid in store.overdue(301.0, limit=10_000)
    store.finish_notify(jid, "delivered")
    assert score(jid) is None


def test_delivery_count(store: JobStore, redis_client: redis.Redis) -> None:
    jid = new_id()
    assert store.load(jid, delivery="tts.poll_tts:0:0") == (None, 0)  # no job, nothing counted
    assert not redis_client.exists(f"tts:job:{jid}")
    store.start_chain(jid, {"model": "m"}, deadline_at=time.time() + 30, check_at=time.time())
    assert [store.load(jid, delivery="tts.poll_tts:0:0")[1] for _ in range(3)] == [1, 2, 3]
    job, count = store.load(jid, delivery="tts.poll_tts:0:0")
    assert job is not None
    assert (job.job_id, count) == (jid, 4)
    assert store.load(jid, delivery="tts.poll_tts:1:0")[1] == 1  # the next step starts again
    # Nothing outside the job's own hash: it goes when the job goes.
    assert redis_client.keys("tts:delivery:*") == []


def test_fields_of_answers_as_one_hmget_each(store: JobStore, redis_client: redis.Redis) -> None:
    """Values, unset fields (None, not ''), empty strings, records that do not exist, and more
    jobs than one script reads (FIELDS_BATCH), in the order asked."""
    fields = ["status", "model", "seen_at", "queue_position"]
    ids = [new_id() for _ in range(jobs.FIELDS_BATCH + 3)]
    for i, jid in enumerate(ids):
        if i % 3 == 0:
            continue  # no record
        mapping = {"status": "polling", "model": f"m-{i}", "seen_at": repr(i + 0.25)}
        if i % 3 == 2:
            mapping["queue_position"] = ""
        redis_client.hset(KEY_PREFIX + jid, mapping=mapping)
    try:
        expected = [redis_client.hmget(KEY_PREFIX + jid, fields) for jid in ids]
        assert store.fields_of(ids, fields) == expected
        assert store.fields_of(ids[1:2], ["model"]) == [["m-1"]]
        assert store.fields_of([], fields) == []
    finally:
        redis_client.delete(*(KEY_PREFIX + jid for jid in ids))
