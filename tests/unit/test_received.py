"""A caller's message gets its job record the moment a worker receives it
(tasks/adapters/received.py):
against a real Redis, with the dispatcher's messages collected instead of published."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks import names, steps
from tasks.adapters.received import on_received
from tasks.nanogpt.parsing import Pending, Ticket
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, SPOOL_PREFIX, WAIT_KEY, Job, cancel_outcome_id
from tasks.record.states import Status, Step, next_step
from tests.support.ctx import Outbox, make_ctx

GRACE_S = 30.0
POLL_TIMEOUT_S = 900.0
ENV = {"TTS_RECOVERY_GRACE": str(GRACE_S), "TTS_POLL_TIMEOUT": str(POLL_TIMEOUT_S)}
HOOK = "https://hooks.example.com/tts?token=abc"
MODEL = "Kokoro-82m"


class Clock:
    """A clock the test moves by hand; starts at the real time so TTLs stay meaningful."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ids(redis_client: redis.Redis) -> Iterator[Callable[[str], str]]:
    """Names a test's job ids so their keys and watch entries go when it ends."""
    used: list[str] = []

    def track(jid: str) -> str:
        used.append(jid)
        return jid

    yield track
    for jid in used:
        redis_client.delete(KEY_PREFIX + jid, SPOOL_PREFIX + jid)
        redis_client.zrem(DUE_KEY, jid)
        redis_client.zrem(WAIT_KEY, jid)


Receive = tuple[Callable[..., str | None], Outbox]


@pytest.fixture
def received(redis_client: redis.Redis, clock: Clock) -> Receive:
    ctx, outbox = make_ctx(redis_client, env=ENV, clock=clock)

    def receive(
        name: str,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        start_at: float | None = None,
    ) -> str | None:
        return on_received(ctx, name, task_id, args, kwargs, start_at=start_at)

    return receive, outbox


def task_id(ids: Callable[[str], str]) -> str:
    return ids(str(uuid.uuid4()))


def record(client: redis.Redis, jid: str) -> Job | None:
    raw = client.hgetall(KEY_PREFIX + jid)
    return Job.from_hash(raw) if raw else None  # type: ignore[arg-type]


def state(client: redis.Redis, jid: str) -> tuple[Any, ...]:
    return client.hgetall(KEY_PREFIX + jid), client.zscore(DUE_KEY, jid)


# --- a submit by name ----------------------------------------------------------------------------


def test_submit_is_recorded_under_its_task_id(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    receive, outbox = received
    tid = task_id(ids)
    assert receive(names.SUBMIT_TTS, tid, ["Hello", MODEL], {"notify_url": HOOK}) == tid
    job = record(redis_client, tid)
    assert job is not None
    assert (job.status, job.owner, job.model, job.notify_url) == (
        Status.SUBMITTING,
        tid,
        MODEL,
        HOOK,
    )
    # What the reconciler needs to send the very same message again, under the same task id.
    assert job.request == {"text": "Hello", "model": MODEL, "notify_url": HOOK, "job_id": tid}
    assert job.deadline_at == clock.now + POLL_TIMEOUT_S
    assert redis_client.zscore(DUE_KEY, tid) == clock.now + GRACE_S
    assert next_step(job) == Step.SUBMIT
    assert job.posts == 0  # received, not sent
    assert outbox.sent == []


def test_submit_with_an_eta_is_watched_from_its_eta(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    receive, _ = received
    later, earlier = task_id(ids), task_id(ids)
    receive(names.SUBMIT_TTS, later, ["Hi", MODEL], {}, start_at=clock.now + 600)
    receive(names.SUBMIT_TTS, earlier, ["Hi", MODEL], {}, start_at=clock.now - 600)
    assert redis_client.zscore(DUE_KEY, later) == clock.now + 600 + GRACE_S
    assert redis_client.zscore(DUE_KEY, earlier) == clock.now + GRACE_S  # overdue ETAs: now


def test_a_countdown_does_not_eat_into_the_deadline(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    """A submit sent with a countdown longer than TTS_POLL_TIMEOUT must not time out before it
    may even start: its deadline counts from its ETA."""
    receive, _ = received
    submit, poll = task_id(ids), task_id(ids)
    eta = clock.now + 3 * POLL_TIMEOUT_S
    receive(names.SUBMIT_TTS, submit, ["Hi", MODEL], {}, start_at=eta)
    receive(names.POLL_TTS, poll, [f"run-{poll}", MODEL], {"job_id": poll}, start_at=eta)
    for jid in (submit, poll):
        job = record(redis_client, jid)
        assert job is not None
        assert job.deadline_at == eta + POLL_TIMEOUT_S
        assert redis_client.ttl(KEY_PREFIX + jid) > 3 * POLL_TIMEOUT_S


def test_submit_with_a_job_id_is_recorded_under_it(
    received: Receive, redis_client: redis.Redis, ids: Callable[[str], str]
) -> None:
    receive, _ = received
    tid, jid = task_id(ids), ids(f"order-{uuid.uuid4().hex}")
    assert receive(names.SUBMIT_TTS, tid, ["Hi", MODEL], {"job_id": jid, "speed": 1.5}) == jid
    job = record(redis_client, jid)
    assert job is not None
    assert job.owner == tid
    assert job.request is not None
    assert (job.request["job_id"], job.request["speed"]) == (jid, 1.5)
    assert record(redis_client, tid) is None


def test_a_second_receive_changes_nothing(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    receive, outbox = received
    tid = task_id(ids)
    receive(names.SUBMIT_TTS, tid, ["Hello", MODEL], {"notify_url": HOOK})
    before = state(redis_client, tid)
    clock.now += 5  # a redelivered copy, received later
    assert receive(names.SUBMIT_TTS, tid, ["Hello", MODEL], {"notify_url": HOOK}) == tid
    assert state(redis_client, tid) == before
    assert outbox.sent == []


# --- a poll by name ------------------------------------------------------------------------------


def test_poll_by_name_starts_a_chain_owned_by_its_task(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    receive, outbox = received
    tid, run_id = task_id(ids), ids(f"run-{uuid.uuid4().hex}")
    kwargs = {"cost": 0.05, "payment_source": "USD", "notify_url": HOOK}
    assert receive(names.POLL_TTS, tid, [run_id, MODEL], kwargs) == run_id
    job = record(redis_client, run_id)
    assert job is not None
    assert (job.status, job.owner, job.run_id, job.model) == (
        Status.POLLING,
        tid,
        run_id,
        MODEL,
    )
    assert (job.cost, job.payment_source, job.notify_url) == (0.05, "USD", HOOK)
    assert job.token
    assert job.seq == "0"
    assert next_step(job) == Step.POLL
    assert redis_client.zscore(DUE_KEY, run_id) == clock.now + GRACE_S
    assert outbox.sent == []
    before = state(redis_client, run_id)
    clock.now += 5
    assert receive(names.POLL_TTS, tid, [run_id, MODEL], kwargs) == run_id
    assert state(redis_client, run_id) == before  # the same token: the message still holds it


class FakeNanoGPT:
    """Answers a submit with a ticket and a status check with "pending"; counts both."""

    def __init__(self) -> None:
        self.submits: list[SubmitRequest] = []
        self.polls: list[PollRequest] = []

    def submit(self, request: SubmitRequest) -> Ticket:
        self.submits.append(request)
        return Ticket("run-from-submit", request.model, 0.05, "USD")

    def status(self, poll: PollRequest) -> Pending:
        self.polls.append(poll)
        return Pending("pending", 3)


def test_the_received_submit_then_runs_as_its_own(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    """The record made on receipt must not turn the message itself into a duplicate."""
    receive, _ = received
    tid = task_id(ids)
    receive(names.SUBMIT_TTS, tid, ["Hello", MODEL], {"notify_url": HOOK})
    upstream = FakeNanoGPT()
    ctx, _ = make_ctx(redis_client, env=ENV, clock=clock, upstream=upstream)
    d = steps.Delivery(names.SUBMIT_TTS, tid)
    assert steps.submit(ctx, d, "Hello", MODEL, notify_url=HOOK) == tid
    assert [r.text for r in upstream.submits] == ["Hello"]
    job = record(redis_client, tid)
    assert job is not None
    assert (job.status, job.run_id, job.posts) == (Status.POLLING, "run-from-submit", 1)
    # Another message with the same job id is a duplicate: it sends nothing.
    other = steps.Delivery(names.SUBMIT_TTS, task_id(ids))
    assert steps.submit(ctx, other, "Hello", MODEL, job_id=tid) == tid
    assert len(upstream.submits) == 1


def test_the_received_poll_then_runs_as_poll_zero(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    receive, _ = received
    tid, run_id = task_id(ids), ids(f"run-{uuid.uuid4().hex}")
    receive(names.POLL_TTS, tid, [run_id, MODEL], {})
    token = (record(redis_client, run_id) or pytest.fail("no record")).token
    upstream = FakeNanoGPT()
    ctx, _ = make_ctx(redis_client, env=ENV, clock=clock, upstream=upstream)
    assert steps.poll(ctx, steps.Delivery(names.POLL_TTS, tid), run_id, MODEL) == run_id
    assert [p.run_id for p in upstream.polls] == [run_id]
    job = record(redis_client, run_id)
    assert job is not None
    assert job.holds(token or "", 1)  # poll 0 ran under the chain the receipt started
    # A poll by name from another message finds the chain and leaves it alone.
    assert steps.poll(ctx, steps.Delivery(names.POLL_TTS, task_id(ids)), run_id, MODEL) == run_id
    assert len(upstream.polls) == 1


# --- messages that need no record ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        (names.POLL_TTS, ["RUN", MODEL], {"job_id": "JOB", "lease": "tok", "seq": 3}),
        (names.POLL_TTS, ["RUN", MODEL], {"lease": "tok", "seq": 0}),
        (names.DOWNLOAD_AUDIO, ["JOB"], {}),
        (names.NOTIFY, ["JOB"], {}),
        (names.CLEANUP_AUDIO, [], {}),
        ("some.other_task", ["JOB", MODEL], {}),
    ],
)
def test_messages_of_our_own_make_no_record(
    received: Receive,
    redis_client: redis.Redis,
    ids: Callable[[str], str],
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
) -> None:
    receive, outbox = received
    tid, jid, run_id = task_id(ids), ids(f"job-{uuid.uuid4().hex}"), ids(f"run-{uuid.uuid4()}")

    def fill(value: Any) -> Any:
        return {"JOB": jid, "RUN": run_id}.get(value, value) if isinstance(value, str) else value

    args = [fill(a) for a in args]
    kwargs = {k: fill(v) for k, v in kwargs.items()}
    assert receive(name, tid, args, kwargs) is None
    for key in (tid, jid, run_id):
        assert not redis_client.exists(KEY_PREFIX + key)
        assert redis_client.zscore(DUE_KEY, key) is None
    assert outbox.sent == []


# --- a cancel acts on receipt --------------------------------------------------------------------


def test_a_received_cancel_ends_the_job_at_once_and_its_task_says_so(
    received: Receive, redis_client: redis.Redis, clock: Clock, ids: Callable[[str], str]
) -> None:
    """The worker may die holding the message: by then the job has ended."""
    receive, outbox = received
    jid, cancel_id = task_id(ids), task_id(ids)
    receive(names.SUBMIT_TTS, jid, ["Hello", MODEL], {"notify_url": HOOK})

    assert receive(names.CANCEL, cancel_id, [jid], {}) == jid
    job = record(redis_client, jid)
    assert job is not None
    assert job.outcome is not None
    assert (job.status, job.outcome["error"]["code"], job.outcome_id) == (
        Status.FAILED,
        "CANCELLED",
        cancel_outcome_id(cancel_id),
    )
    assert outbox.names() == [names.NOTIFY]
    # The task then runs (or is redelivered): it recognises its own cancel; another does not.
    ctx, _ = make_ctx(redis_client, env=ENV, clock=clock)
    assert steps.cancel(ctx, steps.Delivery(names.CANCEL, cancel_id), jid) == "cancelled"
    other = steps.Delivery(names.CANCEL, task_id(ids))
    assert steps.cancel(ctx, other, jid) == "already ended: failed"
    assert outbox.names() == [names.NOTIFY]


@pytest.mark.parametrize("args", [[], [None], [7], ["a", "b"]])
def test_a_cancel_naming_no_job_or_for_later_changes_nothing(
    received: Receive,
    redis_client: redis.Redis,
    clock: Clock,
    ids: Callable[[str], str],
    args: list[Any],
) -> None:
    receive, outbox = received
    jid = task_id(ids)
    receive(names.SUBMIT_TTS, jid, ["Hello", MODEL], {})
    before = state(redis_client, jid)
    assert receive(names.CANCEL, task_id(ids), args, {}) is None
    # A cancel sent with a countdown acts at its time, when the task runs.
    assert receive(names.CANCEL, task_id(ids), [jid], {}, start_at=clock.now + 60) is None
    assert state(redis_client, jid) == before
    assert outbox.sent == []


# --- bad arguments -------------------------------------------------------------------------------


def test_bad_input_is_recorded_as_failed_and_announced_once(
    received: Receive, redis_client: redis.Redis, ids: Callable[[str], str]
) -> None:
    receive, outbox = received
    tid = task_id(ids)
    kwargs = {"speed": 10, "notify_url": HOOK}
    assert receive(names.SUBMIT_TTS, tid, ["Hello", MODEL], kwargs) == tid
    job = record(redis_client, tid)
    assert job is not None
    assert job.status == Status.FAILED
    assert job.outcome is not None
    assert job.outcome["type"] == "tts.failed"
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert "speed" in job.outcome["error"]["message"]
    assert (job.notify_url, job.notify_state) == (HOOK, "queued")
    assert next_step(job) == Step.NOTIFY
    assert [(s.name, s.args) for s in outbox.sent] == [(names.NOTIFY, (tid,))]

    # The same message received again, then run by the task: still one outcome, one webhook.
    assert receive(names.SUBMIT_TTS, tid, ["Hello", MODEL], kwargs) == tid
    ctx, _ = make_ctx(redis_client, env=ENV, outbox=outbox)
    d = steps.Delivery(names.SUBMIT_TTS, tid)
    assert steps.submit(ctx, d, "Hello", MODEL, **kwargs) == tid
    assert outbox.names() == [names.NOTIFY]
    again = record(redis_client, tid)
    assert again is not None
    assert again.outcome == job.outcome


def test_bad_poll_input_is_recorded_as_failed(
    received: Receive, redis_client: redis.Redis, ids: Callable[[str], str]
) -> None:
    receive, outbox = received
    tid, run_id = task_id(ids), ids(f"run-{uuid.uuid4().hex}")
    assert receive(names.POLL_TTS, tid, [run_id, MODEL], {"is_api_request": "yes"}) == tid
    job = record(redis_client, tid)
    assert job is not None
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert outbox.names() == [names.NOTIFY]
    assert record(redis_client, run_id) is None  # no chain was started


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (["Hello"], {}),  # no model
        ([], {"text": "Hello"}),
        (["Hello", MODEL, "extra"], {}),  # options are keyword-only
        (["Hello", MODEL], {"colour": "blue"}),  # no such option
    ],
)
@pytest.mark.parametrize("name", [names.SUBMIT_TTS, names.POLL_TTS])
def test_arguments_that_do_not_bind_are_rejected_under_the_task_id(
    received: Receive,
    redis_client: redis.Redis,
    ids: Callable[[str], str],
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
) -> None:
    """tasks/adapters/misfit.py: recorded as INVALID_INPUT at once and announced, like any bad
    input."""
    receive, outbox = received
    tid = task_id(ids)
    assert receive(name, tid, args, {**kwargs, "notify_url": HOOK}) == tid
    job = record(redis_client, tid)
    assert job is not None
    assert job.status == Status.FAILED
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert name in job.outcome["error"]["message"]
    assert job.notify_url == HOOK
    assert outbox.names() == [names.NOTIFY]


def test_a_misspelled_keyword_is_rejected_under_the_job_id_it_names(
    received: Receive, redis_client: redis.Redis, ids: Callable[[str], str]
) -> None:
    receive, outbox = received
    tid, jid = task_id(ids), ids(f"job-{uuid.uuid4().hex}")
    kwargs = {"voice_id": "x", "job_id": jid, "notify_url": HOOK}
    assert receive(names.SUBMIT_TTS, tid, ["hi", MODEL], kwargs) == jid
    job = record(redis_client, jid)
    assert job is not None
    assert job.outcome is not None
    assert "voice_id" in job.outcome["error"]["message"]
    assert not redis_client.exists(KEY_PREFIX + tid)
    assert outbox.names() == [names.NOTIFY]
