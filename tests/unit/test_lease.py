"""The step lease (tasks/record/__init__.py) and the contract its scripts take
(tasks/record/contract.py), against a real Redis: one lease passed from step to step, freed
when the job ends, and arguments that say what they mean instead of sentinels."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tasks.pacing import budget
from tasks.record import contract, jobs
from tasks.record.contract import Change, F, Watch
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, WAIT_KEY, JobStore
from tasks.record.states import SEQ_DONE, NotifyState, Status

OWNER = "submit-task-1"
FAILED = {"type": "tts.failed", "error": {"code": "UPSTREAM_ERROR", "message": "m"}}


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, ttl_s=60)


@pytest.fixture
def new_id(redis_client: redis.Redis) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        made.append(f"lease-{uuid.uuid4().hex}")
        return made[-1]

    yield make
    for jid in made:
        redis_client.delete(KEY_PREFIX + jid)
        redis_client.zrem(DUE_KEY, jid)
        redis_client.zrem(WAIT_KEY, jid)


def submitting(store: JobStore, jid: str) -> None:
    fields = {"status": Status.SUBMITTING, "request": {"text": "t"}}
    assert store.create(jid, fields, ttl_s=30, check_at=100.0, owner=OWNER)


def test_one_lease_passes_from_the_submit_to_the_polls(
    store: JobStore, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    submitting(store, jid)
    assert store.begin_post(jid, OWNER, "a1", posts=1, lease_until=150.0, check_at=180.0)
    job = store.get(jid)
    assert job is not None
    assert (job.owner, job.token, job.seq, job.lease_until) == (OWNER, "a1", "0", 150.0)
    assert job.post_unsent()
    assert store.post_sent(jid, "a1")
    job = store.get(jid)
    assert job is not None
    assert not job.post_unsent()
    # A refused POST counts a try; the next claim takes a new token from the same owner.
    assert store.post_refused(jid, "a1", {F.TRIES: 1}, check_at=190.0)
    assert store.begin_post(jid, OWNER, "a2", posts=2, lease_until=250.0, check_at=280.0)
    assert store.post_sent(jid, "a2")
    assert store.post_accepted(jid, "a2", {"run_id": "r"}, deadline_at=2e9, check_at=300.0) == "a2"
    job = store.get(jid)
    assert job is not None
    # The chain runs under the accepted claim's token, its tries and claim deadline gone.
    assert (job.status, job.token, job.seq, job.lease_until, job.tries) == (
        Status.POLLING,
        "a2",
        "0",
        None,
        0,
    )
    assert store.advance(jid, "a2", 0, {}, check_at=310.0, attempt="poll-x")
    job = store.get(jid)
    assert job is not None
    assert (job.owner, job.seq) == ("poll-x", "1")


def test_an_ended_job_frees_the_lease_for_the_webhook_sender(
    store: JobStore, new_id: Callable[[], str]
) -> None:
    """A POST claim good for minutes must not keep the webhook waiting once the job failed."""
    jid = new_id()
    submitting(store, jid)
    assert store.begin_post(jid, OWNER, "a1", posts=1, lease_until=1e12, check_at=180.0)
    guard = {F.STATUS: Status.POSTING, F.TOKEN: "a1"}
    assert store.settle(jid, FAILED, guards=guard, check_at=200.0)
    job = store.get(jid)
    assert job is not None
    assert (job.owner, job.lease_until, job.seq) == (None, None, SEQ_DONE)
    assert store.claim_notify(jid, "notify-task", lease_s=30)
    assert not store.claim_notify(jid, "another-notify", lease_s=30)
    store.finish_notify(jid, NotifyState.DELIVERED)
    job = store.get(jid)
    assert job is not None
    assert (job.owner, job.lease_until, job.notify_state) == (None, None, NotifyState.DELIVERED)


def test_a_guard_of_none_means_unset(store: JobStore, new_id: Callable[[], str]) -> None:
    jid = new_id()
    submitting(store, jid)
    assert not store.settle(jid, FAILED, guards={F.TOKEN: "x"}, check_at=1.0)
    assert store.settle(jid, FAILED, guards={F.TOKEN: None}, check_at=1.0)


def test_check_times_say_keep_or_drop_and_never_none(
    store: JobStore, new_id: Callable[[], str], redis_client: redis.Redis
) -> None:
    jid = new_id()
    submitting(store, jid)
    store.update(jid, {"last_error": "e"})  # keeps it
    assert redis_client.zscore(DUE_KEY, jid) == 100.0
    store.update(jid, {"last_error": "e"}, check_at=Watch.DROP)
    assert redis_client.zscore(DUE_KEY, jid) is None
    store.update(jid, {"last_error": "e"}, check_at=5.0)  # off the watch: stays off
    assert redis_client.zscore(DUE_KEY, jid) is None
    store.recheck_at(jid, 7.0)
    assert redis_client.zscore(DUE_KEY, jid) == 7.0
    with pytest.raises(TypeError):
        store.recheck_at(jid, None)  # type: ignore[arg-type]


def test_a_change_is_one_typed_document() -> None:
    change = Change(
        guard={F.STATUS: Status.POLLING, F.TOKEN: None},
        fields={"queue_position": None, "polls": 3, "is_api_request": True},
        drop=("queue_position",),
        check_at=Watch.KEEP,
    )
    doc = json.loads(change.arg())
    assert doc["guard"] == [["status", "polling"], ["token", None]]
    assert doc["set"] == ["polls", "3", "is_api_request", "1"]  # None is not written
    assert doc["drop"] == ["queue_position"]
    assert doc["watch"] == "keep"
    assert "ttl" not in doc
    assert "park_at" not in doc


def test_scripts_spell_no_state_value_of_their_own() -> None:
    """Every status, notify state, closed seq and grant in a script comes from its constant
    (spliced in by contract.lua, double-quoted); a single-quoted copy is a second spelling."""
    values = [*Status, *NotifyState, SEQ_DONE, contract.POLL_GRANT_PREFIX, contract.SUBMIT_GRANT]
    values += [f.value for f in F]
    sources = [
        jobs._ACCEPT,
        jobs._TRANSITION,
        jobs._SETTLE,
        jobs._CLAIM_NOTIFY,
        jobs._COUNT_DELIVERY,
        budget._SPEND,
        budget._GRANT,
    ]
    for source in sources:
        for value in values:
            assert f"'{value}'" not in source, value
