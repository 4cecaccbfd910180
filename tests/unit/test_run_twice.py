"""A transition whose reply was lost, run again: the steps meet their own earlier run.

The client no longer re-sends commands (tasks/adapters/runtime.py), but a script can still run twice
for one caller: a reply lost after the script ran, then the step's own retry. Here "ran but the
reply was lost" is the transition called twice with the same arguments against a real Redis,
the caller seeing only the second answer. Each step must then go on as if the first answer had
arrived, and no job may end ``SUBMIT_UNCONFIRMED`` unless its POST left.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks import errors, names, steps
from tasks.nanogpt.parsing import Ticket
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, POST_SENT, SPOOL_PREFIX, WAIT_KEY
from tasks.record.states import Status
from tests.support.ctx import make_ctx


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Upstream:
    """NanoGPT that accepts every POST with a ticket, and counts them."""

    def __init__(self) -> None:
        self.posts = 0

    def submit(self, request: Any) -> Ticket:
        self.posts += 1
        return Ticket(run_id=f"run-{self.posts}", model="Kokoro-82m", cost=0.01, payment_source="x")

    def status(self, poll: Any) -> Any:
        raise AssertionError("no status call in these tests")


def reply_lost(method: Callable[..., Any]) -> Callable[..., Any]:
    """The transition ran, its reply was lost, and it ran again: the caller sees the second."""

    def twice(*args: Any, **kwargs: Any) -> Any:
        method(*args, **kwargs)
        return method(*args, **kwargs)

    return twice


@pytest.fixture
def job_id(redis_client: redis.Redis) -> Iterator[str]:
    jid = f"tw-{uuid.uuid4().hex}"
    yield jid
    redis_client.delete(KEY_PREFIX + jid, SPOOL_PREFIX + jid)
    for key in (DUE_KEY, WAIT_KEY):
        redis_client.zrem(key, jid)


def test_begin_post_sent_twice_still_posts_once(
    redis_client: redis.Redis, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding (a): the re-run found its own ``posting`` and said no; the job then sat in
    ``posting`` until the reconciler ended it SUBMIT_UNCONFIRMED, with no POST ever sent."""
    clock, upstream = Clock(), Upstream()
    ctx, _ = make_ctx(redis_client, clock=clock, upstream=upstream)
    monkeypatch.setattr(ctx.jobs, "begin_post", reply_lost(ctx.jobs.begin_post))
    d = steps.Delivery(names.SUBMIT_TTS, job_id)
    steps.submit(ctx, d, "Hello twice", "Kokoro-82m", job_id=job_id)
    # The reconciler re-sends the submit once its claim has run out (the lost-message path).
    clock.now += 3600
    steps.submit(ctx, d, "Hello twice", "Kokoro-82m", job_id=job_id)
    job = ctx.jobs.get(job_id)
    assert job is not None
    code = (job.outcome or {}).get("error", {}).get("code")
    assert (upstream.posts, job.status, code) == (1, Status.POLLING, None)


def test_a_claim_whose_post_never_left_is_not_unconfirmed(
    redis_client: redis.Redis, job_id: str
) -> None:
    """A worker that claimed the POST and stopped before sending it: once the claim runs out
    the submit is sent (once), never ended as "may have been billed"."""
    clock, upstream = Clock(), Upstream()
    ctx, _ = make_ctx(redis_client, clock=clock, upstream=upstream)
    d = steps.Delivery(names.SUBMIT_TTS, job_id)
    request = steps.accept.validation.submit_request("Hello", "Kokoro-82m")
    steps.accept_submit(ctx, job_id, request, None, owner=job_id)
    assert ctx.jobs.begin_post(
        job_id, job_id, "dead-attempt", posts=1, lease_until=clock.now + 10, check_at=clock.now
    )
    clock.now += 60  # the claim ran out; the job's deadline has not
    steps.submit(ctx, d, "Hello", "Kokoro-82m", job_id=job_id)
    job = ctx.jobs.get(job_id)
    assert job is not None
    assert (upstream.posts, job.status, job.outcome) == (1, Status.POLLING, None)


def test_a_claim_whose_post_left_ends_unconfirmed(redis_client: redis.Redis, job_id: str) -> None:
    """The other side of the rule: a POST that did leave is never sent again."""
    clock, upstream = Clock(), Upstream()
    ctx, _ = make_ctx(redis_client, clock=clock, upstream=upstream)
    d = steps.Delivery(names.SUBMIT_TTS, job_id)
    request = steps.accept.validation.submit_request("Hello", "Kokoro-82m")
    steps.accept_submit(ctx, job_id, request, None, owner=job_id)
    lease_until = clock.now + 10
    assert ctx.jobs.begin_post(
        job_id, job_id, "sent-attempt", posts=1, lease_until=lease_until, check_at=clock.now
    )
    assert ctx.jobs.post_sent(job_id, "sent-attempt")
    clock.now += 3600
    steps.submit(ctx, d, "Hello", "Kokoro-82m", job_id=job_id)
    job = ctx.jobs.get(job_id)
    assert job is not None
    assert job.outcome is not None
    assert upstream.posts == 0
    assert job.outcome["error"]["code"] == errors.SubmitUnconfirmed.code


def test_reject_whose_create_ran_twice_still_tells_the_caller(
    redis_client: redis.Redis, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding (b): the re-run of ``create`` found the record it had just made and said no, so
    the INVALID_INPUT outcome was never written: a ``failed`` record with no outcome, off the
    reconciler's watch, and no webhook."""
    ctx, outbox = make_ctx(redis_client)
    monkeypatch.setattr(ctx.jobs, "create", reply_lost(ctx.jobs.create))
    d = steps.Delivery(names.SUBMIT_TTS, job_id)
    steps.submit(ctx, d, "", "Kokoro-82m", notify_url="https://example.com/hook")
    job = ctx.jobs.get(job_id)
    assert job is not None
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert redis_client.zscore(DUE_KEY, job_id) is not None
    assert outbox.names() == [names.NOTIFY]


def test_reject_twice_announces_once(redis_client: redis.Redis, job_id: str) -> None:
    """A duplicate of a bad message (same task id) after the first finished records nothing
    new and sends no second webhook."""
    ctx, outbox = make_ctx(redis_client)
    d = steps.Delivery(names.SUBMIT_TTS, job_id)
    steps.submit(ctx, d, "", "Kokoro-82m")
    first = ctx.jobs.get(job_id)
    steps.submit(ctx, d, "", "Kokoro-82m")
    assert ctx.jobs.get(job_id) == first
    assert outbox.names() == [names.NOTIFY]


# --- every transition, run twice: the second answer is the first ------------------------------

OWNER = "owner-task"


def _submitting(store: Any, jid: str) -> None:
    assert store.create(
        jid,
        {"status": Status.SUBMITTING, "request": {"text": "t"}},
        ttl_s=30,
        check_at=100.0,
        owner=OWNER,
    )


def _posting(store: Any, jid: str) -> None:
    _submitting(store, jid)
    assert store.begin_post(jid, OWNER, "a1", posts=1, lease_until=150.0, check_at=180.0)


def _polling(store: Any, jid: str) -> str:
    _posting(store, jid)
    token = store.post_accepted(
        jid, "a1", {"run_id": "r", "model": "m"}, deadline_at=2e9, check_at=1.0
    )
    assert token
    return str(token)


def _twice(call: Callable[[], Any]) -> tuple[Any, Any]:
    return call(), call()


@pytest.fixture
def store(redis_client: redis.Redis) -> Any:
    ctx, _ = make_ctx(redis_client)
    return ctx.jobs


def test_create_twice_by_its_owner(store: Any, job_id: str) -> None:
    fields = {"status": Status.SUBMITTING}
    first, second = _twice(
        lambda: store.create(job_id, fields, ttl_s=30, check_at=1.0, owner=OWNER)
    )
    assert first is second is True
    # Anyone else (another message naming the same job id) is still refused.
    assert not store.create(job_id, fields, ttl_s=30, check_at=1.0, owner="another-task")


def test_start_chain_twice_by_its_owner(store: Any, job_id: str) -> None:
    fields = {"run_id": "r", "model": "m"}
    first, second = _twice(
        lambda: store.start_chain(job_id, fields, deadline_at=2e9, check_at=1.0, owner=OWNER)
    )
    assert first
    assert first == second
    assert store.start_chain(job_id, fields, deadline_at=2e9, check_at=1.0, owner="x") is None


def test_begin_post_twice(store: Any, job_id: str) -> None:
    _submitting(store, job_id)
    first, second = _twice(
        lambda: store.begin_post(job_id, OWNER, "a1", posts=1, lease_until=150.0, check_at=180.0)
    )
    assert first is second is True
    # Another execution of the same message is still refused.
    assert not store.begin_post(job_id, OWNER, "a2", posts=2, lease_until=1.0, check_at=1.0)


def test_post_sent_twice(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    assert _twice(lambda: store.post_sent(job_id, "a1")) == (True, True)
    assert store.get(job_id).seq == POST_SENT
    assert not store.post_sent(job_id, "a2")


def test_post_not_sent_twice(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    assert store.post_sent(job_id, "a1")
    assert _twice(lambda: store.post_not_sent(job_id, "a1")) == (True, True)
    assert store.get(job_id).post_unsent()
    # Another claim's execution cannot take this mark back; a mark never written: True.
    assert store.post_sent(job_id, "a1")
    assert not store.post_not_sent(job_id, "a2")
    assert store.get(job_id).seq == POST_SENT


def test_post_refused_twice(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    first, second = _twice(
        lambda: store.post_refused(job_id, "a1", {"last_error": "503"}, check_at=9.0)
    )
    assert first is second is True
    assert store.get(job_id).status == Status.SUBMITTING


def test_post_accepted_twice_keeps_its_token(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    first, second = _twice(
        lambda: store.post_accepted(job_id, "a1", {"run_id": "r"}, deadline_at=2e9, check_at=9.0)
    )
    assert first
    assert first == second == store.get(job_id).token


def test_audio_ready_twice(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    first, second = _twice(
        lambda: store.audio_ready(job_id, "a1", {"audio_url": "https://a/b"}, check_at=9.0)
    )
    assert first is second is True


def test_advance_twice_by_one_execution(store: Any, job_id: str) -> None:
    token = _polling(store, job_id)
    first, second = _twice(lambda: store.advance(job_id, token, 0, {}, check_at=9.0, attempt="p1"))
    assert first is second is True
    job = store.get(job_id)
    assert (job.seq, job.polls) == ("1", 1)  # moved, and counted, once
    # A duplicate message of poll 0 (another execution) is still refused.
    assert not store.advance(job_id, token, 0, {}, check_at=9.0, attempt="p2")


def test_end_polling_twice_by_one_execution(store: Any, job_id: str) -> None:
    token = _polling(store, job_id)
    first, second = _twice(
        lambda: store.end_polling(job_id, token, 0, {}, check_at=9.0, attempt="p1")
    )
    assert first is second is True
    assert store.get(job_id).polls == 1
    assert not store.end_polling(job_id, token, 0, {}, check_at=9.0, attempt="p2")


def test_defer_poll_twice(store: Any, job_id: str) -> None:
    token = _polling(store, job_id)
    first, second = _twice(
        lambda: store.defer_poll(job_id, token, 0, due_at=5.0, deliveries=2, deadline_at=60.0)
    )
    assert first is second is True


def test_defer_submit_twice(store: Any, job_id: str) -> None:
    _submitting(store, job_id)
    first, second = _twice(
        lambda: store.defer_submit(job_id, OWNER, deliveries=1, check_at=9.0, queued_at=1.0)
    )
    assert first is second is True


def test_settle_twice_with_its_outcome_id(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    outcome = {"type": "tts.failed", "error": {"code": "X", "message": "m"}}
    assert store.settle(job_id, outcome, check_at=9.0, outcome_id="o1")
    first_run = store.redis.hgetall(KEY_PREFIX + job_id)
    # Run again: it changes nothing, says so (True means "this call recorded it", once per
    # job), and its caller finds its own outcome id (tasks/steps/cancel.py).
    assert not store.settle(job_id, outcome, check_at=9.0, outcome_id="o1")
    assert store.redis.hgetall(KEY_PREFIX + job_id) == first_run
    assert store.get(job_id).outcome_id == "o1"
    # Any other settle (another outcome id) still loses: the first outcome wins.
    assert not store.settle(job_id, outcome, check_at=9.0, outcome_id="o2")


def test_claim_notify_twice(store: Any, job_id: str) -> None:
    _posting(store, job_id)
    assert store.settle(job_id, {"type": "tts.failed", "error": {}}, check_at=9.0)
    assert _twice(lambda: store.claim_notify(job_id, "n1", lease_s=60)) == (True, True)
    assert not store.claim_notify(job_id, "n2", lease_s=60)


# --- the caller's text goes once the POST is accepted -------------------------------------------


@pytest.mark.parametrize("accepted", ["ticket", "audio"])
def test_the_text_goes_once_the_post_is_accepted(
    store: Any, redis_client: redis.Redis, job_id: str, accepted: str
) -> None:
    _posting(store, job_id)
    assert redis_client.hexists(KEY_PREFIX + job_id, "request")
    if accepted == "ticket":
        store.post_accepted(job_id, "a1", {"run_id": "r"}, deadline_at=2e9, check_at=9.0)
    else:
        store.audio_ready(job_id, "a1", {"audio_url": "https://a/b"}, check_at=9.0)
    assert not redis_client.hexists(KEY_PREFIX + job_id, "request")


def test_the_text_stays_while_it_may_be_sent_and_goes_with_the_outcome(
    store: Any, redis_client: redis.Redis, job_id: str
) -> None:
    _posting(store, job_id)
    store.post_refused(job_id, "a1", {}, check_at=9.0)  # it will be sent again: kept
    assert store.get(job_id).request == {"text": "t"}
    assert store.settle(job_id, {"type": "tts.failed", "error": {}}, check_at=9.0)
    assert not redis_client.hexists(KEY_PREFIX + job_id, "request")
