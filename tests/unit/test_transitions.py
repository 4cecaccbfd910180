"""Each named transition of a job, against a real Redis: it acts only from the state it names,
refuses (and changes nothing) otherwise, and moves the reconciler's watch (``tts:due``) with it.
Then the questions :mod:`tasks.record.states` answers about the jobs those transitions leave
behind."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from tasks.pacing import budget
from tasks.record import contract, jobs
from tasks.record.contract import Change, F, Watch
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, SPOOL_PREFIX, WAIT_KEY, Job, JobStore
from tasks.record.states import (
    SEQ_DONE,
    NotifyState,
    Status,
    Step,
    has_live_poll,
    next_step,
    notify_pending,
    submit_to_resend,
)

# The store's TTL for a record with nothing in flight (seconds).
TTL_S = 60
OWNER = "task-owner-1"
REQUEST = {"text": "Hello", "model": "Kokoro-82m", "job_id": "x"}
FAILED = {"type": "tts.failed", "error": {"code": "SUBMIT_UNCONFIRMED", "message": "m"}}
COMPLETED = {"type": "tts.completed", "audio": {"url": "file:///a.wav"}}


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, ttl_s=TTL_S)


@pytest.fixture
def new_id(redis_client: redis.Redis) -> Iterator[Callable[[], str]]:
    """Fresh job ids; every key and watch entry they made goes when the test ends."""
    made: list[str] = []

    def make() -> str:
        made.append(f"tr-{uuid.uuid4().hex}")
        return made[-1]

    yield make
    for jid in made:
        redis_client.delete(KEY_PREFIX + jid, SPOOL_PREFIX + jid)
        redis_client.zrem(DUE_KEY, jid)
        redis_client.zrem(WAIT_KEY, jid)


def due(client: redis.Redis, jid: str) -> float | None:
    return client.zscore(DUE_KEY, jid)


def parked(client: redis.Redis, jid: str) -> float | None:
    return client.zscore(WAIT_KEY, jid)


def snapshot(client: redis.Redis, jid: str) -> tuple[Any, ...]:
    """Everything a transition may touch for one job."""
    return (
        client.hgetall(KEY_PREFIX + jid),
        due(client, jid),
        parked(client, jid),
        client.get(SPOOL_PREFIX + jid),
        client.ttl(KEY_PREFIX + jid) > TTL_S * 2,  # a renewed TTL would cross this line
    )


def get(store: JobStore, jid: str) -> Job:
    job = store.get(jid)
    assert job is not None
    return job


def submitting(store: JobStore, jid: str, *, check_at: float = 100.0) -> None:
    created = store.create(
        jid,
        {
            "status": Status.SUBMITTING,
            "model": "Kokoro-82m",
            "owner": OWNER,
            "request": REQUEST,
        },
        ttl_s=30,
        check_at=check_at,
    )
    assert created


def posting(store: JobStore, jid: str, attempt: str = "attempt-1") -> str:
    submitting(store, jid)
    assert store.begin_post(jid, OWNER, attempt, posts=1, lease_until=150.0, check_at=180.0)
    return attempt


def polling(store: JobStore, jid: str) -> str:
    attempt = posting(store, jid)
    token = store.post_accepted(
        jid,
        attempt,
        {"run_id": "run-1", "model": "Kokoro-82m"},
        deadline_at=time.time() + 100,
        check_at=200.0,
    )
    assert token is not None
    return token


# --- begin_post: submitting → posting ----------------------------------------------------------


def test_begin_post_claims_the_post(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    submitting(store, jid, check_at=100.0)
    assert store.begin_post(jid, OWNER, "attempt-1", posts=1, lease_until=150.0, check_at=180.0)
    job = get(store, jid)
    assert (job.status, job.token, job.posts) == (Status.POSTING, "attempt-1", 1)
    assert job.lease_until == 150.0
    assert due(redis_client, jid) == 180.0


def test_begin_post_needs_the_submit_owner(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    submitting(store, jid)
    before = snapshot(redis_client, jid)
    assert not store.begin_post(jid, "someone-else", "a", posts=1, lease_until=1.0, check_at=9.0)
    assert snapshot(redis_client, jid) == before


def test_a_second_begin_post_is_refused(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    posting(store, jid, "attempt-1")
    before = snapshot(redis_client, jid)
    # The same message, redelivered while the first execution is still sending.
    assert not store.begin_post(jid, OWNER, "attempt-2", posts=2, lease_until=1.0, check_at=9.0)
    assert snapshot(redis_client, jid) == before
    assert get(store, jid).token == "attempt-1"


@pytest.mark.parametrize(
    "status", [Status.POLLING, Status.DOWNLOADING, Status.COMPLETED, Status.FAILED]
)
def test_begin_post_only_from_submitting(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str], status: Status
) -> None:
    jid = new_id()
    store.create(jid, {"status": status, "owner": OWNER}, ttl_s=30, check_at=100.0)
    before = snapshot(redis_client, jid)
    assert not store.begin_post(jid, OWNER, "a", posts=1, lease_until=1.0, check_at=9.0)
    assert snapshot(redis_client, jid) == before


def test_no_transition_makes_a_record(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    assert not store.begin_post(jid, OWNER, "a", posts=1, lease_until=1.0, check_at=9.0)
    assert not store.post_refused(jid, "a", {}, check_at=9.0)
    assert store.post_accepted(jid, "a", {}, deadline_at=time.time() + 9, check_at=9.0) is None
    assert not store.audio_ready(jid, "a", {}, check_at=9.0)
    assert not store.advance(jid, "t", 0, {}, check_at=9.0, park_at=9.0)
    assert not store.end_polling(jid, "t", 0, {}, check_at=9.0)
    assert not store.settle(jid, FAILED, check_at=9.0)
    assert not redis_client.exists(KEY_PREFIX + jid)
    assert due(redis_client, jid) is None
    assert parked(redis_client, jid) is None


# --- post_refused: posting → submitting ------------------------------------------------------


def test_post_refused_gives_the_claim_back(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    attempt = posting(store, jid)
    assert store.post_refused(jid, attempt, {"last_error": "HTTP 503"}, check_at=250.0)
    job = get(store, jid)
    assert (job.status, job.last_error) == (Status.SUBMITTING, "HTTP 503")
    assert due(redis_client, jid) == 250.0
    # The retry of the same message may claim it again.
    assert store.begin_post(jid, OWNER, "attempt-2", posts=2, lease_until=300.0, check_at=330.0)
    assert get(store, jid).posts == 2


def test_post_refused_needs_the_attempt(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    posting(store, jid, "attempt-1")
    before = snapshot(redis_client, jid)
    assert not store.post_refused(jid, "attempt-0", {"last_error": "stale"}, check_at=9.0)
    assert snapshot(redis_client, jid) == before


def test_post_refused_only_from_posting(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    attempt = posting(store, jid)
    assert store.settle(jid, FAILED, guards={"token": attempt}, check_at=100.0)
    before = snapshot(redis_client, jid)
    # The claim ran out and the job was settled; the late answer must not reopen it.
    assert not store.post_refused(jid, attempt, {}, check_at=9.0)
    assert snapshot(redis_client, jid) == before


# --- post_accepted: posting → polling ----------------------------------------------------------


def test_post_accepted_starts_a_poll_chain(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    attempt = posting(store, jid)
    assert redis_client.ttl(KEY_PREFIX + jid) <= 30 + TTL_S
    deadline_at = time.time() + 1000
    token = store.post_accepted(
        jid,
        attempt,
        {"run_id": "run-1", "model": "Kokoro-82m", "cost": 0.05},
        deadline_at=deadline_at,
        check_at=400.0,
        park_at=350.0,
    )
    assert token
    job = get(store, jid)
    assert job.holds(token, 0)
    assert (job.run_id, job.cost, job.deadline_at) == ("run-1", 0.05, deadline_at)
    assert due(redis_client, jid) == 400.0
    assert parked(redis_client, jid) == 350.0
    # The record now lives until the deadline, plus the store's TTL.
    assert 1000 + TTL_S - 5 <= redis_client.ttl(KEY_PREFIX + jid) <= 1000 + TTL_S


def test_post_accepted_without_park_at_parks_nothing(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    polling(store, jid)
    assert parked(redis_client, jid) is None
    assert due(redis_client, jid) == 200.0


def test_post_accepted_needs_the_attempt(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    posting(store, jid, "attempt-1")
    before = snapshot(redis_client, jid)
    token = store.post_accepted(
        jid, "attempt-0", {"run_id": "r"}, deadline_at=time.time() + 1000, check_at=9.0, park_at=9.0
    )
    assert token is None
    assert snapshot(redis_client, jid) == before


def test_post_accepted_only_once(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    token = polling(store, jid)
    before = snapshot(redis_client, jid)
    # The same attempt again (its reply was lost) gets its own token back, and changes nothing.
    again = store.post_accepted(
        jid, "attempt-1", {"run_id": "r2"}, deadline_at=time.time() + 9, check_at=9.0
    )
    assert again == token
    assert snapshot(redis_client, jid) == before
    other = store.post_accepted(
        jid, "attempt-2", {"run_id": "r2"}, deadline_at=time.time() + 9, check_at=9.0
    )
    assert other is None
    assert snapshot(redis_client, jid) == before
    assert get(store, jid).holds(token, 0)


# --- audio_ready: posting → downloading ----------------------------------------------------------


def test_audio_ready_hands_over_to_download(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    attempt = posting(store, jid)
    fields = {"spooled": True, "content_type": "audio/wav"}
    assert store.audio_ready(jid, attempt, fields, check_at=500.0)
    job = get(store, jid)
    assert (job.status, job.spooled, job.content_type) == (Status.DOWNLOADING, True, "audio/wav")
    assert due(redis_client, jid) == 500.0


@pytest.mark.parametrize("stage", ["wrong attempt", "submitting", "polling", "settled"])
def test_audio_ready_needs_the_posting_attempt(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str], stage: str
) -> None:
    jid = new_id()
    attempt = "attempt-1"
    if stage == "submitting":
        submitting(store, jid)
    elif stage == "polling":
        polling(store, jid)
    else:
        posting(store, jid, attempt)
        if stage == "wrong attempt":
            attempt = "attempt-0"
        else:
            assert store.settle(jid, FAILED, check_at=100.0)
    before = snapshot(redis_client, jid)
    assert not store.audio_ready(jid, attempt, {"audio_url": "https://x/a.wav"}, check_at=9.0)
    assert snapshot(redis_client, jid) == before


# --- advance and end_polling: the poll lease -----------------------------------------------------


def test_advance_moves_the_lease_and_the_watch(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    token = polling(store, jid)
    assert store.advance(jid, token, 0, {"queue_position": 2}, check_at=600.0, park_at=550.0)
    job = get(store, jid)
    assert job.holds(token, 1)
    assert (job.polls, job.queue_position) == (1, 2)
    assert due(redis_client, jid) == 600.0
    assert parked(redis_client, jid) == 550.0
    before = snapshot(redis_client, jid)
    assert not store.advance(jid, token, 0, {}, check_at=9.0, park_at=9.0)  # poll 0, again
    assert not store.advance(jid, "other-chain", 1, {}, check_at=9.0, park_at=9.0)
    assert snapshot(redis_client, jid) == before


def test_end_polling_hands_over_to_download(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    token = polling(store, jid)
    assert store.end_polling(jid, token, 0, {"audio_url": "https://x/a.wav"}, check_at=700.0)
    job = get(store, jid)
    assert (job.status, job.seq, job.polls) == (Status.DOWNLOADING, SEQ_DONE, 1)
    assert due(redis_client, jid) == 700.0
    before = snapshot(redis_client, jid)
    assert not store.end_polling(jid, token, 0, {}, check_at=9.0)
    assert not store.advance(jid, token, 0, {}, check_at=9.0)
    assert snapshot(redis_client, jid) == before


def test_no_poll_transition_from_posting(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    posting(store, jid)
    before = snapshot(redis_client, jid)
    # No token yet: an empty one must not match the unset field either.
    assert not store.advance(jid, "", 0, {}, check_at=9.0)
    assert not store.end_polling(jid, "", 0, {}, check_at=9.0)
    assert snapshot(redis_client, jid) == before


# --- settle: → completed / failed ----------------------------------------------------------------


def test_settle_with_guards_refuses_a_mismatch(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    posting(store, jid, "attempt-1")
    before = snapshot(redis_client, jid)
    stale = {"status": Status.POSTING, "token": "attempt-0"}
    assert not store.settle(jid, FAILED, guards=stale, check_at=9.0)
    assert not store.settle(jid, COMPLETED, guards={"status": Status.DOWNLOADING}, check_at=9.0)
    assert snapshot(redis_client, jid) == before
    assert get(store, jid).outcome is None


def test_settle_with_matching_guards(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    attempt = posting(store, jid)
    guards = {"status": Status.POSTING, "token": attempt}
    assert store.settle(jid, FAILED, guards=guards, check_at=800.0)
    job = get(store, jid)
    assert (job.status, job.outcome, job.notify_state) == (Status.FAILED, FAILED, "queued")
    assert job.seq == SEQ_DONE
    assert due(redis_client, jid) == 800.0  # the webhook is due now


def test_settle_with_a_stale_lease_is_refused(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    token = polling(store, jid)
    assert store.advance(jid, token, 0, {}, check_at=600.0)
    before = snapshot(redis_client, jid)
    assert not store.settle(jid, FAILED, lease=(token, 0), check_at=9.0)
    assert snapshot(redis_client, jid) == before
    assert store.settle(jid, FAILED, lease=(token, 1), polls=2, check_at=900.0)
    assert get(store, jid).polls == 2


def test_first_outcome_wins(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    token = polling(store, jid)
    assert store.end_polling(jid, token, 0, {}, check_at=700.0)
    assert store.settle(jid, COMPLETED, guards={"status": Status.DOWNLOADING}, check_at=800.0)
    before = snapshot(redis_client, jid)
    assert not store.settle(jid, FAILED, check_at=9.0)
    assert not store.settle(jid, COMPLETED, check_at=9.0)  # the same outcome, twice
    assert snapshot(redis_client, jid) == before
    assert get(store, jid).status == Status.COMPLETED


def test_first_outcome_wins_under_concurrency(store: JobStore, new_id: Callable[[], str]) -> None:
    jid = new_id()
    submitting(store, jid)
    outcomes = [
        {"type": "tts.failed", "error": {"code": f"C{i}", "message": "m"}} for i in range(16)
    ]
    with ThreadPoolExecutor(16) as pool:
        won = list(pool.map(lambda o: store.settle(jid, o, check_at=1.0), outcomes))
    assert won.count(True) == 1
    assert get(store, jid).outcome == outcomes[won.index(True)]


def test_settle_drops_the_spool_and_the_parked_poll(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    token = store.post_accepted(
        jid, posting(store, jid), {}, deadline_at=time.time() + 5000, check_at=1.0, park_at=50.0
    )
    assert token is not None
    store.spool(jid, b"\x00audio", ttl_s=300)
    assert parked(redis_client, jid) == 50.0
    assert store.settle(jid, FAILED, lease=(token, 0), check_at=900.0)
    assert store.spooled_audio(jid) is None
    assert not redis_client.exists(SPOOL_PREFIX + jid)
    assert parked(redis_client, jid) is None
    assert due(redis_client, jid) == 900.0
    # The record outlives the outcome by the store's TTL, not by the poll deadline.
    assert 0 < redis_client.ttl(KEY_PREFIX + jid) <= TTL_S


def test_a_refused_settle_keeps_the_spool(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    assert store.audio_ready(jid, posting(store, jid), {"spooled": True}, check_at=500.0)
    store.spool(jid, b"kept", ttl_s=300)
    assert not store.settle(jid, FAILED, guards={"status": Status.POSTING}, check_at=9.0)
    assert store.spooled_audio(jid) == b"kept"


# --- the spool -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio",
    [b"\x00", b"\x00\x00\xff\x00", bytes(range(256)) * 64, b"RIFF\x00\x00\x00\x00WAVEfmt "],
)
def test_spool_round_trip(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str], audio: bytes
) -> None:
    jid = new_id()
    assert store.spooled_audio(jid) is None
    store.spool(jid, audio, ttl_s=120)
    assert store.spooled_audio(jid) == audio
    assert 0 < redis_client.ttl(SPOOL_PREFIX + jid) <= 120
    # Stored as text: the store's client decodes answers, so raw bytes would not survive.
    assert base64.b64decode(redis_client.get(SPOOL_PREFIX + jid) or "") == audio
    store.drop_spool(jid)
    assert store.spooled_audio(jid) is None


def test_spool_ttl_is_at_least_a_second(
    store: JobStore, redis_client: redis.Redis, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    store.spool(jid, b"x", ttl_s=0.2)
    assert 0 < redis_client.pttl(SPOOL_PREFIX + jid) <= 1000


# --- tasks/record/states.py: the questions asked of a job ----------------------------------------


def job(**fields: Any) -> Job:
    return Job(job_id="j", **{"status": Status.POLLING, **fields})


LIVE = {"run_id": "r", "model": "m", "token": "t", "seq": "3"}


@pytest.mark.parametrize(
    ("fields", "live"),
    [
        (LIVE, True),
        ({**LIVE, "seq": "0"}, True),
        ({**LIVE, "seq": SEQ_DONE}, False),
        ({**LIVE, "seq": None}, False),
        ({**LIVE, "token": None}, False),
        ({**LIVE, "run_id": None}, False),
        ({**LIVE, "model": None}, False),
        ({**LIVE, "status": Status.POSTING}, False),
        ({**LIVE, "status": Status.SUBMITTING}, False),
        ({**LIVE, "status": Status.DOWNLOADING}, False),
        ({**LIVE, "status": Status.FAILED}, False),
    ],
)
def test_has_live_poll(fields: dict[str, Any], live: bool) -> None:
    assert has_live_poll(job(**fields)) is live


@pytest.mark.parametrize(
    ("outcome", "state", "pending"),
    [
        (None, None, False),
        (None, NotifyState.QUEUED, False),
        (FAILED, None, True),
        (FAILED, NotifyState.QUEUED, True),
        *[(FAILED, s, False) for s in NotifyState if s != NotifyState.QUEUED],
    ],
)
def test_notify_pending(outcome: dict[str, Any] | None, state: str | None, pending: bool) -> None:
    settled = job(status=Status.FAILED, outcome=outcome, notify_state=state)
    assert notify_pending(settled) is pending


SUBMIT_FIELDS = {"request": REQUEST, "owner": OWNER}


@pytest.mark.parametrize(
    ("fields", "step"),
    [
        ({"status": Status.SUBMITTING, **SUBMIT_FIELDS}, Step.SUBMIT),
        ({"status": Status.POSTING, **SUBMIT_FIELDS}, Step.SUBMIT),
        ({"status": Status.POSTING, "owner": OWNER}, None),
        ({"status": Status.POSTING, "request": REQUEST}, None),
        ({"status": Status.SUBMITTING}, None),
        (LIVE, Step.POLL),
        ({**LIVE, "seq": SEQ_DONE}, None),
        ({"status": Status.DOWNLOADING, "seq": SEQ_DONE}, Step.DOWNLOAD),
        # An outcome comes first, whatever else the record still holds.
        ({**LIVE, "outcome": FAILED, "notify_state": "queued"}, Step.NOTIFY),
        ({"status": Status.POSTING, **SUBMIT_FIELDS, "outcome": FAILED}, Step.NOTIFY),
        ({"status": Status.FAILED, "outcome": FAILED, "notify_state": "delivered"}, None),
        ({"status": Status.COMPLETED, "outcome": COMPLETED, "notify_state": "none"}, None),
    ],
)
def test_next_step(fields: dict[str, Any], step: Step | None) -> None:
    assert next_step(job(**fields)) == step


@pytest.mark.parametrize(
    ("fields", "resend"),
    [
        ({"status": Status.SUBMITTING, **SUBMIT_FIELDS}, (REQUEST, OWNER)),
        ({"status": Status.POSTING, **SUBMIT_FIELDS}, (REQUEST, OWNER)),
        ({"status": Status.POSTING, "owner": OWNER}, None),
        ({"status": Status.SUBMITTING, "request": REQUEST}, None),
        ({**LIVE, **SUBMIT_FIELDS}, None),
        ({"status": Status.FAILED, **SUBMIT_FIELDS}, None),
    ],
)
def test_submit_to_resend(
    fields: dict[str, Any], resend: tuple[dict[str, Any], str] | None
) -> None:
    """What the reconciler and the releaser send a waiting submit again with."""
    assert submit_to_resend(job(**fields)) == resend


def test_next_step_follows_the_transitions(store: JobStore, new_id: Callable[[], str]) -> None:
    """The predicates read the records the transitions really write."""
    jid = new_id()
    submitting(store, jid)
    assert next_step(get(store, jid)) == Step.SUBMIT
    attempt = "attempt-1"
    assert store.begin_post(jid, OWNER, attempt, posts=1, lease_until=1.0, check_at=9.0)
    assert next_step(get(store, jid)) == Step.SUBMIT  # a claim that ran out ends the job
    token = store.post_accepted(
        jid, attempt, {"run_id": "run-1", "model": "m"}, deadline_at=time.time() + 60, check_at=9.0
    )
    assert token is not None
    assert has_live_poll(get(store, jid))
    assert next_step(get(store, jid)) == Step.POLL
    assert store.end_polling(jid, token, 0, {}, check_at=9.0)
    assert not has_live_poll(get(store, jid))
    assert next_step(get(store, jid)) == Step.DOWNLOAD
    assert store.settle(jid, COMPLETED, guards={"status": Status.DOWNLOADING}, check_at=9.0)
    assert notify_pending(get(store, jid))
    assert next_step(get(store, jid)) == Step.NOTIFY
    store.finish_notify(jid, NotifyState.DELIVERED)
    assert next_step(get(store, jid)) is None


def test_a_job_settled_while_posting_needs_only_its_webhook(
    store: JobStore, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    attempt = posting(store, jid)
    assert store.settle(jid, FAILED, guards={"token": attempt}, check_at=9.0)
    settled = get(store, jid)
    assert not has_live_poll(settled)
    assert next_step(settled) == Step.NOTIFY


# --- the step lease (tasks/record/__init__.py) and the scripts' typed arguments -------------


def test_one_lease_passes_from_the_submit_to_the_polls(
    store: JobStore, new_id: Callable[[], str]
) -> None:
    jid = new_id()
    posting(store, jid, "a1")
    job = get(store, jid)
    assert (job.owner, job.token, job.seq, job.lease_until) == (OWNER, "a1", "0", 150.0)
    assert job.post_unsent()
    assert store.post_sent(jid, "a1")
    job = get(store, jid)
    assert not job.post_unsent()
    # A refused POST counts a try; the next claim takes a new token from the same owner.
    assert store.post_refused(jid, "a1", {F.TRIES: 1}, check_at=190.0)
    assert store.begin_post(jid, OWNER, "a2", posts=2, lease_until=250.0, check_at=280.0)
    assert store.post_sent(jid, "a2")
    assert store.post_accepted(jid, "a2", {"run_id": "r"}, deadline_at=2e9, check_at=300.0) == "a2"
    job = get(store, jid)
    # The chain runs under the accepted claim's token, its tries and claim deadline gone.
    assert (job.status, job.token, job.seq, job.lease_until, job.tries) == (
        Status.POLLING,
        "a2",
        "0",
        None,
        0,
    )
    assert store.advance(jid, "a2", 0, {}, check_at=310.0, attempt="poll-x")
    job = get(store, jid)
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
    job = get(store, jid)
    assert (job.owner, job.lease_until, job.seq) == (None, None, SEQ_DONE)
    assert store.claim_notify(jid, "notify-task", lease_s=30)
    assert not store.claim_notify(jid, "another-notify", lease_s=30)
    store.finish_notify(jid, NotifyState.DELIVERED)
    job = get(store, jid)
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
        budget._RELEASE_UNLIMITED,
        budget._PEEK,
        budget._REFUSED,
    ]
    for source in sources:
        for value in values:
            assert f"'{value}'" not in source, value
