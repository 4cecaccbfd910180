"""A step that raised is never acknowledged as done (tasks/adapters/acks.py, tasks/adapters/tts.py
``_run``).

The policy against a real job store; the Celery side with a task whose request the test pushes
(an eager request: ``Task.retry`` builds the copy it would publish and hands it back)."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, Task
from celery.canvas import Signature
from celery.exceptions import Reject, Retry

from tasks import names, steps
from tasks.adapters import acks, tts
from tasks.nanogpt import validation
from tasks.record.jobs import DUE_KEY, KEY_PREFIX
from tasks.record.states import Status
from tests.support.ctx import make_ctx

MODEL = "Kokoro-82m"
HOOK = "https://hooks.example.com/tts"
ENV = {"TTS_RETRY_BASE_DELAY": "1", "TTS_RETRY_MAX_DELAY": "10", "TTS_MAX_DELIVERIES": "3"}

UNAVAILABLE = [
    redis.ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused."),
    redis.TimeoutError("Timeout reading from socket"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.ResponseError("READONLY You can't write against a read only replica."),
    redis.ResponseError("LOADING Redis is loading the dataset in memory"),
    redis.ResponseError("MASTERDOWN Link with MASTER is down"),
    redis.ResponseError("BUSY Redis is busy running a script."),
]
NOT_UNAVAILABLE = [
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.exceptions.DataError("Invalid input of type: 'dict'."),
    KeyError("status"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("exc", UNAVAILABLE, ids=lambda e: f"{type(e).__name__}:{e}"[:40])
def test_a_store_that_cannot_serve_now_is_unavailable(exc: Exception) -> None:
    assert acks.store_unavailable(exc)


@pytest.mark.parametrize("exc", NOT_UNAVAILABLE, ids=lambda e: f"{type(e).__name__}:{e}"[:40])
def test_an_error_about_this_message_is_not(exc: Exception) -> None:
    assert not acks.store_unavailable(exc)


# redis-py maps these replies itself: OOM and READONLY are unavailable whatever class it picks.
# The classes a redis-py upgrade might add between them change nothing here.
def test_counts_come_from_the_headers_and_nothing_else() -> None:
    assert acks.Resent.of(None) == acks.Resent(0, 0)
    assert acks.Resent.of({"tts_store_retries": 4, "tts_crashes": 1}) == acks.Resent(4, 1)
    assert acks.Resent.of({"tts_store_retries": "9", "tts_crashes": True}) == acks.Resent(0, 0)
    assert acks.Resent.of({"tts_store_retries": -3}) == acks.Resent(0, 0)


def test_a_resent_copy_counts_its_deliveries_apart() -> None:
    """Else a job-store outage, retried five times, would park its job as a poison message."""
    first = steps.Delivery(names.POLL_TTS, "t", 1)
    assert first.step(2) == f"{names.POLL_TTS}:2:1"  # unchanged for every message before
    assert steps.Delivery(names.POLL_TTS, "t", 1, 1).step(2) != first.step(2)
    assert steps.Delivery(names.POLL_TTS, "t", 1, 1).step(2) != (
        steps.Delivery(names.POLL_TTS, "t", 1, 2).step(2)
    )


@pytest.fixture
def job(redis_client: redis.Redis) -> Iterator[str]:
    jid = f"acks-{uuid.uuid4().hex[:8]}"
    yield jid
    redis_client.delete(KEY_PREFIX + jid)
    redis_client.zrem(DUE_KEY, jid)


def test_the_store_unavailable_is_retried_without_a_cap(redis_client: redis.Redis) -> None:
    ctx, outbox = make_ctx(redis_client, env=ENV)
    d = steps.Delivery(names.SUBMIT_TTS, "t")
    resent = acks.Resent()
    waits = []
    for _ in range(50):  # far past TTS_MAX_RETRIES (8) and TTS_MAX_DELIVERIES (3)
        again = acks.after_error(ctx, d, redis.ConnectionError("refused"), resent, lambda: None)
        assert again is not None
        waits.append(again.wait_s)
        resent = again.resent
    assert resent == acks.Resent(store=50, crashes=0)
    assert 0.5 <= waits[0] <= 1.0  # TTS_RETRY_BASE_DELAY, less up to half of jitter
    assert all(5.0 <= w <= 10.0 for w in waits[10:])  # capped at TTS_RETRY_MAX_DELAY
    assert outbox.sent == []


def test_a_broker_that_is_down_for_a_steps_publish_is_a_wait(redis_client: redis.Redis) -> None:
    import kombu.exceptions

    ctx, _ = make_ctx(redis_client, env=ENV)
    d = steps.Delivery(names.NOTIFY, "t")
    down = kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:5672.")
    again = acks.after_error(ctx, d, down, acks.Resent(crashes=2), lambda: None)
    assert again is not None
    assert again.resent == acks.Resent(store=1, crashes=2)  # not counted as a crash


def test_a_bug_is_retried_then_its_job_fails_announced(redis_client: redis.Redis, job: str) -> None:
    ctx, outbox = make_ctx(redis_client, env=ENV)
    request = validation.submit_request("Hello", MODEL)
    steps.accept_submit(ctx, job, request, HOOK, owner=job)
    d = steps.Delivery(names.SUBMIT_TTS, job)
    resent = acks.Resent(store=7)  # an earlier outage does not count against the bug's cap
    for n in (1, 2):
        again = acks.after_error(ctx, d, KeyError("status"), resent, lambda: job)
        assert again is not None
        assert again.resent == acks.Resent(store=7, crashes=n)
        resent = again.resent
    assert ctx.jobs.get(job).status == Status.SUBMITTING  # type: ignore[union-attr]
    # The third run that raises (TTS_MAX_DELIVERIES=3) ends the job, and says so.
    assert acks.after_error(ctx, d, KeyError("status"), resent, lambda: job) is None
    ended = ctx.jobs.get(job)
    assert ended is not None
    assert ended.outcome is not None
    assert ended.outcome["error"]["code"] == "WORKER_LOST"
    assert outbox.names() == [names.NOTIFY]


def test_a_message_naming_no_job_is_dropped_after_its_runs(redis_client: redis.Redis) -> None:
    ctx, outbox = make_ctx(redis_client, env=ENV)
    d = steps.Delivery(names.DOWNLOAD_AUDIO, "t")
    assert acks.after_error(ctx, d, TypeError("x"), acks.Resent(crashes=2), lambda: None) is None
    assert outbox.sent == []


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "expected"),
    [
        (names.SUBMIT_TTS, ("Hi", MODEL), {}, "task-1"),
        (names.SUBMIT_TTS, ("Hi", MODEL), {"job_id": "mine"}, "mine"),
        (names.POLL_TTS, ("run-9", MODEL), {}, "run-9"),
        (names.POLL_TTS, ("run-9", MODEL), {"job_id": "mine"}, "mine"),
        (names.DOWNLOAD_AUDIO, ("j-1",), {}, "j-1"),
        (names.NOTIFY, (), {"job_id": "j-2"}, "j-2"),
        (names.DOWNLOAD_AUDIO, (7,), {}, None),
    ],
)
def test_the_job_of_a_message(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str | None
) -> None:
    assert acks.job_of(name, steps.Delivery(name, "task-1"), args, kwargs) == expected


# --- the Celery side: tasks/adapters/tts.py _run -------------------------------------------


@pytest.fixture
def task(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Task]:  # type: ignore[type-arg]
    ctx, _ = make_ctx(redis_client, env=ENV)
    monkeypatch.setattr(tts.rt, "context", lambda: ctx)
    app = Celery("acks-test", broker="memory://")

    @app.task(name=names.DOWNLOAD_AUDIO, shared=False, **tts.COMMON)
    def download(self: Task, job_id: str) -> None:  # type: ignore[type-arg]
        """Never run: the test calls tts._run with its own step."""

    yield download
    app.close()


def run(task: Task, step: Any, **request: Any) -> Retry:  # type: ignore[type-arg]
    task.push_request(id="tid-1", args=("j-1",), kwargs={}, called_directly=False, **request)
    try:
        with pytest.raises(Retry) as raised:
            tts._run(task, step, "j-1")
        return raised.value
    finally:
        task.pop_request()


def test_a_store_error_is_a_retry_of_the_same_message(task: Task) -> None:  # type: ignore[type-arg]
    seen: list[steps.Delivery] = []

    def step(_ctx: Any, d: steps.Delivery, job_id: str) -> str:
        seen.append(d)
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory")

    retry = run(task, step, retries=5, headers={"tts_store_retries": 3}, is_eager=True)
    assert retry.sig is not None
    options = retry.sig.options
    assert options["task_id"] == "tid-1"  # the same message: the same job
    assert options["headers"]["tts_store_retries"] == 4
    assert options["retries"] == 6
    assert 1 <= options["countdown"] <= 10
    # The step's own retries do not count the copies re-sent for the store.
    assert seen == [steps.Delivery(names.DOWNLOAD_AUDIO, "tid-1", retries=2, resent=3)]


def test_a_steps_own_retry_keeps_the_counts(task: Task) -> None:  # type: ignore[type-arg]
    from tasks import errors

    def step(_ctx: Any, _d: steps.Delivery, job_id: str) -> steps.Retry:
        return steps.Retry(2.0, errors.UpstreamUnavailable("503"))

    retry = run(task, step, retries=4, headers={"tts_store_retries": 3}, is_eager=True)
    assert retry.sig is not None
    assert retry.sig.options["headers"] == {"tts_store_retries": 3, "tts_crashes": 0}


def test_a_retry_drops_rabbitmqs_dead_letter_marks(task: Task) -> None:  # type: ignore[type-arg]
    """A copy that still carried ``x-death`` from its last trip through the native-delay queues
    was dropped by RabbitMQ as a dead-letter cycle on its next one (every 3 s store retry after
    a 1 s one was lost in the job-store fault runs)."""

    def step(_ctx: Any, _d: steps.Delivery, job_id: str) -> str:
        raise redis.exceptions.ConnectionError("refused")

    marks = {
        "x-death": [{"queue": "celery_delayed_0", "count": 1}],
        "x-first-death-queue": "celery_delayed_0",
        "x-last-death-reason": "expired",
    }
    retry = run(task, step, headers={**marks, "tts_store_retries": 1, "app": "x"}, is_eager=True)
    assert retry.sig is not None
    assert retry.sig.options["headers"] == {"app": "x", "tts_store_retries": 2, "tts_crashes": 0}


def test_a_retry_that_cannot_be_published_is_given_back(
    task: Task,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broker_down(*_: Any, **__: Any) -> None:
        raise ConnectionRefusedError("the broker is down too")

    monkeypatch.setattr(Signature, "apply_async", broker_down)

    def step(_ctx: Any, _d: steps.Delivery, job_id: str) -> str:
        raise redis.ConnectionError("refused")

    task.push_request(id="tid-1", args=("j-1",), kwargs={}, called_directly=False)
    try:
        with pytest.raises(Reject) as raised:
            tts._run(task, step, "j-1")
    finally:
        task.pop_request()
    assert raised.value.requeue  # type: ignore[attr-defined]  # Celery's own: requeue=False


def test_tasks_never_ack_a_failure() -> None:
    assert tts.COMMON["acks_late"] is True
    assert tts.COMMON["acks_on_failure_or_timeout"] is False


# --- NanoGPT's answer that the store could not take travels with the retry -----------------------


class OneTicket:
    """NanoGPT taking every POST (and counting them)."""

    def __init__(self) -> None:
        self.posts = 0

    def submit(self, request: Any) -> Any:
        from tasks.nanogpt.parsing import Ticket

        self.posts += 1
        return Ticket("run-paid-once", request.model, 0.05, "USD")


def test_an_answer_the_store_refused_is_recorded_by_the_retry(
    redis_client: redis.Redis, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = OneTicket()
    ctx, _ = make_ctx(redis_client, env=ENV, upstream=upstream)
    store = type(ctx.jobs)
    real = store.post_accepted

    def full(*_: Any, **__: Any) -> Any:
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory")

    monkeypatch.setattr(store, "post_accepted", full)
    d = steps.Delivery(names.SUBMIT_TTS, job)
    with pytest.raises(steps.AnswerUnrecorded) as raised:
        steps.submit(ctx, d, "Hello", MODEL, job_id=job)
    carried = raised.value.answer
    assert carried["run_id"] == "run-paid-once"
    # What _run does with it: a store retry (not a crash), the answer in the message.
    again = acks.after_error(ctx, d, raised.value, acks.Resent(), lambda: job)
    assert again is not None
    assert again.resent == acks.Resent(store=1)
    # Before: the retry found the claim with no answer and the job ended SUBMIT_UNCONFIRMED.
    monkeypatch.setattr(store, "post_accepted", real)
    retried = steps.Delivery(names.SUBMIT_TTS, job, 0, 1)
    assert steps.submit(ctx, retried, "Hello", MODEL, job_id=job, accepted=carried) == job
    assert_polling_after_one_post(ctx, job, upstream.posts)


def test_an_answer_whose_claim_a_restart_lost_is_recorded_not_posted_again(
    redis_client: redis.Redis, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job store restarted on an AOF fsynced every second and lost the POST's claim with
    its last second: the record is back to ``submitting``. Before, the retry carrying NanoGPT's
    answer found no claim to match it, POSTed again and was billed twice (the simulation's
    ``restart`` family, seed 38)."""
    upstream = OneTicket()
    ctx, _ = make_ctx(redis_client, env=ENV, upstream=upstream)
    store = type(ctx.jobs)
    real_begin, real_accepted = store.begin_post, store.post_accepted
    kept: dict[str, Any] = {}

    def fsynced_before(self: Any, job_id: str, *args: Any, **kwargs: Any) -> bool:
        # What the AOF holds at the restart: the record as it was before the claim.
        kept["record"] = redis_client.dump(KEY_PREFIX + job_id)
        kept["due"] = redis_client.zscore(DUE_KEY, job_id)
        return bool(real_begin(self, job_id, *args, **kwargs))

    def restarted(*_: Any, **__: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(store, "begin_post", fsynced_before)
    monkeypatch.setattr(store, "post_accepted", restarted)
    d = steps.Delivery(names.SUBMIT_TTS, job)
    with pytest.raises(steps.AnswerUnrecorded) as raised:
        steps.submit(ctx, d, "Hello", MODEL, job_id=job)
    carried = raised.value.answer
    assert upstream.posts == 1
    redis_client.restore(KEY_PREFIX + job, 0, kept["record"], replace=True)
    redis_client.zadd(DUE_KEY, {job: kept["due"]})
    lost = ctx.jobs.get(job)
    assert lost is not None
    assert lost.status == Status.SUBMITTING
    monkeypatch.setattr(store, "begin_post", real_begin)
    monkeypatch.setattr(store, "post_accepted", real_accepted)
    retried = steps.Delivery(names.SUBMIT_TTS, job, 0, 1)
    assert steps.submit(ctx, retried, "Hello", MODEL, job_id=job, accepted=carried) == job
    assert_polling_after_one_post(ctx, job, upstream.posts)


@pytest.mark.parametrize(
    "accepted",
    [None, "x", {"attempt": "another", "kind": "ticket", "run_id": "r", "model": MODEL}],
)
def test_an_answer_for_another_claim_is_not_taken(accepted: object) -> None:
    module = importlib.import_module("tasks.steps.submit")  # the package's name is the function
    assert module._carried_answer(accepted, "this-claim") is None
    crafted = {"attempt": "this-claim", "kind": "ticket", "run_id": "r", "bogus": 1}
    assert module._carried_answer(crafted, "this-claim") is None
    good = {"attempt": "this-claim", "kind": "ticket", "run_id": "r", "model": MODEL}
    good |= {"cost": None, "payment_source": None}
    assert module._carried_answer(good, "this-claim") is not None


def test_a_claim_whose_reply_was_lost_is_taken_over_by_one_retry(
    redis_client: redis.Redis, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job store ran begin_post but its reply never came (frozen, then resumed): before,
    the retry found the claim, left it, and the job ended SUBMIT_UNCONFIRMED with no POST."""
    upstream = OneTicket()
    ctx, _ = make_ctx(redis_client, env=ENV, upstream=upstream)
    store = type(ctx.jobs)
    real = store.begin_post

    def ran_but_timed_out(self: Any, *args: Any, **kwargs: Any) -> bool:
        assert real(self, *args, **kwargs)
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(store, "begin_post", ran_but_timed_out)
    d = steps.Delivery(names.SUBMIT_TTS, job)
    with pytest.raises(steps.AnswerUnrecorded) as raised:
        steps.submit(ctx, d, "Hello", MODEL, job_id=job)
    carried = raised.value.answer
    assert carried["kind"] == "claim"
    assert upstream.posts == 0
    claimed = ctx.jobs.get(job)
    assert claimed is not None
    assert (claimed.status, claimed.token) == (Status.POSTING, carried["attempt"])
    monkeypatch.setattr(store, "begin_post", real)
    # Two copies of the retry (a duplicate delivery): one takes the claim over and POSTs.
    for resent in (1, 1):
        retried = steps.Delivery(names.SUBMIT_TTS, job, 0, resent)
        assert steps.submit(ctx, retried, "Hello", MODEL, job_id=job, accepted=carried) == job
    recorded = ctx.jobs.get(job)
    assert recorded is not None
    assert (recorded.status, recorded.run_id, recorded.posts, upstream.posts) == (
        Status.POLLING,
        "run-paid-once",
        1,
        1,
    )


def test_a_claim_refused_because_its_first_run_took_it_is_ours(
    redis_client: redis.Redis, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py re-sends a script whose reply timed out: the re-sent begin_post is refused by
    the claim its first run took. Before, the job then sat in posting and ended
    SUBMIT_UNCONFIRMED with no POST."""
    upstream = OneTicket()
    ctx, _ = make_ctx(redis_client, env=ENV, upstream=upstream)
    store = type(ctx.jobs)
    real = store.begin_post

    def sent_twice(self: Any, *args: Any, **kwargs: Any) -> bool:
        real(self, *args, **kwargs)  # the first run, whose reply was lost
        return bool(real(self, *args, **kwargs))  # the re-send's answer: refused

    monkeypatch.setattr(store, "begin_post", sent_twice)
    assert steps.submit(ctx, steps.Delivery(names.SUBMIT_TTS, job), "Hi", MODEL, job_id=job) == job
    recorded = ctx.jobs.get(job)
    assert recorded is not None
    assert (recorded.status, recorded.posts, upstream.posts) == (Status.POLLING, 1, 1)


def assert_polling_after_one_post(ctx: Any, job: str, posts: int) -> None:
    """The job went on to poll NanoGPT's one ticket, and the text was POSTed once."""
    recorded = ctx.jobs.get(job)
    assert recorded is not None
    assert (recorded.status, recorded.run_id, posts) == (Status.POLLING, "run-paid-once", 1)
