"""The progress stream of a job (tasks/steps/progress.py), against a real Redis: its entries, its
length and TTL, what the steps publish, and a Redis that refuses it failing nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from tasks import errors, names, steps
from tasks.nanogpt.parsing import AudioLink, Pending, Ticket
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.pacing import schedule
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, WAIT_KEY
from tasks.record.states import Status
from tasks.steps import outcomes, progress
from tasks.sweeps import granting
from tests.support.ctx import Sent, make_ctx

MODEL = "Elevenlabs-Turbo-V2.5"
HOOK = "https://hooks.example.com/tts"


@pytest.fixture
def ids(redis_client: redis.Redis) -> Iterator[Callable[[], str]]:
    used: list[str] = []

    def new() -> str:
        used.append(f"job-{uuid.uuid4().hex}")
        return used[-1]

    yield new
    for jid in used:
        redis_client.delete(KEY_PREFIX + jid, progress.stream_key(jid))
        for key in (DUE_KEY, WAIT_KEY):
            redis_client.zrem(key, jid)


def entries(client: redis.Redis, jid: str) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(progress.stream_key(jid))]  # type: ignore[union-attr]


def test_an_entry_carries_what_is_known_and_omits_the_rest(
    redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, _ = make_ctx(redis_client, clock=lambda: 1234.5)
    jid = ids()
    assert progress.publish(ctx, jid, Status.POLLING, queue_position=3, eta_s=4.25)
    assert progress.publish(ctx, jid, Status.COMPLETED)
    assert entries(redis_client, jid) == [
        {"status": "polling", "queue_position": "3", "eta_s": "4.25", "at": "1234.5"},
        {"status": "completed", "at": "1234.5"},
    ]


def test_the_stream_lives_as_long_as_the_job_record_at_least(
    redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, _ = make_ctx(redis_client, env={"TTS_JOB_TTL": "600"})
    jid = ids()
    progress.publish(ctx, jid, Status.SUBMITTING)  # no record (yet): the job TTL
    assert 590 <= redis_client.ttl(progress.stream_key(jid)) <= 600
    redis_client.set(KEY_PREFIX + jid, "x", ex=5000)  # a record with a deadline ahead
    progress.publish(ctx, jid, Status.POLLING)
    assert 4990 <= redis_client.ttl(progress.stream_key(jid)) <= 5000


def test_the_stream_is_trimmed_to_about_its_length(
    redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, _ = make_ctx(redis_client)
    jid = ids()
    for _ in range(1000):
        progress.publish(ctx, jid, Status.POLLING, queue_position=1)
    # Approximate trimming drops whole nodes (100 entries by default): never below the limit.
    assert progress.MAX_ENTRIES <= redis_client.xlen(progress.stream_key(jid)) <= 150


def test_a_redis_that_refuses_fails_nothing_and_is_counted() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    ctx, _ = make_ctx(dead)
    before = REGISTRY.get_sample_value("tts_progress_dropped_total") or 0.0
    assert progress.publish(ctx, "job-x", Status.POLLING) is False
    assert REGISTRY.get_sample_value("tts_progress_dropped_total") == before + 1


def test_queue_eta_is_the_schedules_estimate_of_the_wait_for_the_head() -> None:
    assert progress.queue_eta_s(schedule.Progress(None)) is None
    assert progress.queue_eta_s(schedule.Progress(0)) is None  # at the head: generating
    prior = schedule.Progress(4)  # the queue not yet seen to move: the prior speed
    assert progress.queue_eta_s(prior) == 4 * schedule.PRIOR_S_PER_PLACE
    moved = schedule.Progress(2, first_position=6, since_first_s=8.0)  # 2 s a place
    assert progress.queue_eta_s(moved) == pytest.approx(4.0)


class Upstream:
    """A ticket, then pending answers at the given positions, then the audio link."""

    def __init__(self, positions: list[int | None]) -> None:
        self.positions = positions

    def submit(self, request: SubmitRequest) -> Ticket:
        return Ticket("run-1", request.model, 0.05, "USD")

    def status(self, poll: PollRequest) -> Pending | AudioLink:
        if self.positions:
            return Pending("pending", self.positions.pop(0))
        return AudioLink("https://audio.example.com/a.wav", None)


def test_a_job_publishes_each_change_through_its_steps(
    redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    clock = [time.time()]
    ctx, outbox = make_ctx(
        redis_client,
        clock=lambda: clock[0],
        upstream=Upstream([2, 1, 0]),
    )
    jid = ids()
    steps.submit(ctx, steps.Delivery(names.SUBMIT_TTS, jid), "Hi", MODEL, notify_url=HOOK)

    def ours() -> list[Sent]:  # the shared wait set may release other tests' jobs too
        return [s for s in outbox.sent if s.args[:1] == (jid,) or s.kwargs.get("job_id") == jid]

    while not ours() or ours()[-1].name == names.POLL_TTS:
        clock[0] += 31.0  # past the next poll's time: the releaser publishes it
        granting.release(ctx)
        sent = ours()[-1]
        steps.poll(ctx, steps.Delivery(names.POLL_TTS, "t"), *sent.args, **sent.kwargs)
    assert ours()[-1].name == names.DOWNLOAD_AUDIO
    seen = entries(redis_client, jid)
    assert [e["status"] for e in seen] == [
        "submitting",
        "posting",
        "polling",
        "polling",
        "polling",
        "polling",
        "downloading",
    ]
    pending = seen[3:6]
    assert [e.get("queue_position") for e in pending] == ["2", "1", "0"]
    assert "eta_s" in pending[0]  # queued: the schedule's estimate
    assert "eta_s" not in pending[2]  # at the head: generating
    assert float(seen[-1]["at"]) == pytest.approx(clock[0])
    # The outcome, once settled, is the last entry.
    outcomes.fail(ctx, jid, errors.StorageFailed("disk full"))
    assert entries(redis_client, jid)[-1]["status"] == "failed"


def test_a_rejected_job_has_its_final_entry(
    redis_client: redis.Redis, ids: Callable[[], str]
) -> None:
    ctx, _ = make_ctx(redis_client)
    jid = ids()
    steps.submit(ctx, steps.Delivery(names.SUBMIT_TTS, "t"), "", MODEL, job_id=jid)
    assert [e["status"] for e in entries(redis_client, jid)] == ["failed"]
