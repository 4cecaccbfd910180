"""What each call publishes (name, queue, arguments) on a real Redis broker, and that a
wrong keyword or type raises TypeError at the call with nothing published."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

import tts_client.client
from tasks.record.jobs import JobStore, Watch
from tests.client.conftest import published
from tts_client import TTSClient

ELEVEN = "Elevenlabs-Turbo-V2.5"
QUEUES = ("tts.submit", "tts.poll", "celery")


def nothing_published(url: str) -> bool:
    return all(published(url, queue) == [] for queue in QUEUES)


def test_submit_publishes_tts_submit_tts_on_its_queue(
    tts: TTSClient, client_redis_url: str
) -> None:
    job_id = tts.submit("Hello", ELEVEN, voice="Rachel", speed=1.5, notify_url="https://a/h")
    [message] = published(client_redis_url, "tts.submit")
    assert message["task"] == "tts.submit_tts"
    assert message["content_type"] == "application/json"
    assert message["args"] == ["Hello", ELEVEN]
    assert message["kwargs"] == {
        "voice": "Rachel",
        "speed": 1.5,
        "notify_url": "https://a/h",
        "job_id": job_id,
    }
    assert len(job_id) == 36  # a new UUID
    assert nothing_published(client_redis_url)


def test_submit_sends_every_option_and_the_given_job_id(
    tts: TTSClient, client_redis_url: str
) -> None:
    options: dict[str, Any] = {
        "voice": "v",
        "speed": 1,
        "response_format": "mp3",
        "instructions": "calm",
        "stability": 0.5,
        "similarity_boost": 0.25,
        "style": 0.0,
        "notify_url": "https://a/h",
    }
    assert tts.submit("Hi", ELEVEN, **options, job_id="mine") == "mine"
    [message] = published(client_redis_url, "tts.submit")
    assert message["kwargs"] == {**options, "job_id": "mine"}


def test_reuse_is_sent_only_when_turned_off(tts: TTSClient, client_redis_url: str) -> None:
    tts.submit("Hi", ELEVEN, job_id="default")
    tts.submit("Hi", ELEVEN, job_id="own", reuse=False)
    default, own = published(client_redis_url, "tts.submit")
    assert default["kwargs"] == {"job_id": "default"}  # as before: the worker's default
    assert own["kwargs"] == {"job_id": "own", "reuse": False}
    with pytest.raises(TypeError):
        tts.submit("Hi", ELEVEN, reuse="no")  # type: ignore[arg-type]


def test_task_events_show_text_cut_short_and_urls_without_their_secrets(
    tts: TTSClient, client_redis_url: str
) -> None:
    """What Flower and task events show of the message (its body keeps everything)."""
    hook = "https://app.example.com/hooks/tts?token=s3cr3t"
    tts.submit("A long text. " * 20, ELEVEN, notify_url=hook)
    [message] = published(client_redis_url, "tts.submit")
    assert message["kwargs"]["notify_url"] == hook
    assert "s3cr3t" not in message["kwargsrepr"]
    assert "https://app.example.com" in message["kwargsrepr"]
    assert len(message["argsrepr"]) < 100
    assert message["argsrepr"].startswith("['A long text.")


def test_poll_publishes_tts_poll_tts_on_its_queue(tts: TTSClient, client_redis_url: str) -> None:
    assert tts.poll("run-1", ELEVEN, cost=0.1, payment_source="USD") == "run-1"
    assert tts.poll("run-2", ELEVEN, is_api_request=False, job_id="j2") == "j2"
    first, second = published(client_redis_url, "tts.poll")
    assert (first["task"], first["args"]) == ("tts.poll_tts", ["run-1", ELEVEN])
    assert first["kwargs"] == {
        "cost": 0.1,
        "payment_source": "USD",
        "is_api_request": True,
        "job_id": "run-1",
    }
    assert second["kwargs"] == {"is_api_request": False, "job_id": "j2"}


def test_tenant_and_priority_are_sent_and_a_default_lane_is_left_out(
    tts: TTSClient, client_redis_url: str
) -> None:
    tts.submit("Hi", ELEVEN, job_id="a", tenant="acme", priority="interactive")
    tts.submit("Hi", ELEVEN, job_id="b", tenant="acme", priority="normal")
    tts.poll("run-3", ELEVEN, tenant="shop", priority="bulk")
    first, second = published(client_redis_url, "tts.submit")
    assert first["kwargs"] == {"tenant": "acme", "priority": "interactive", "job_id": "a"}
    assert second["kwargs"] == {"tenant": "acme", "job_id": "b"}
    [poll] = published(client_redis_url, "tts.poll")
    assert poll["kwargs"] == {
        "tenant": "shop",
        "priority": "bulk",
        "is_api_request": True,
        "job_id": "run-3",
    }


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.submit("Hi", ELEVEN, voice_id="x"), "voice_id"),
        (lambda c: c.submit("Hi", ELEVEN, "Rachel"), "positional"),
        (lambda c: c.submit("Hi"), "model"),
        (lambda c: c.submit(None, ELEVEN), "text must be a str"),
        (lambda c: c.submit("Hi", 3), "model must be a str"),
        (lambda c: c.submit("Hi", ELEVEN, speed="fast"), "speed must be a number"),
        (lambda c: c.submit("Hi", ELEVEN, speed=True), "speed must be a number"),
        (lambda c: c.submit("Hi", ELEVEN, voice=["a"]), "voice must be a str"),
        (lambda c: c.submit("Hi", ELEVEN, job_id=5), "job_id must be a str"),
        (lambda c: c.submit("Hi", ELEVEN, notify_url=b"https://a"), "notify_url"),
        (lambda c: c.poll("run", ELEVEN, run="x"), "run"),
        (lambda c: c.poll("run", ELEVEN, is_api_request="yes"), "is_api_request must be a bool"),
        (lambda c: c.poll("run", ELEVEN, cost="0.1"), "cost must be a number"),
        (lambda c: c.poll(42, ELEVEN), "run_id must be a str"),
        (lambda c: c.submit("Hi", ELEVEN, tenant=3), "tenant must be a str"),
        (lambda c: c.submit("Hi", ELEVEN, priority=None), "priority must be a str"),
        (lambda c: c.poll("run", ELEVEN, priority=2), "priority must be a str"),
        (lambda c: c.cancel(42), "job_id must be a str"),
        (lambda c: c.get(None), "job_id must be a str"),
        (lambda c: c.watch(b"id"), "job_id must be a str"),
        (lambda c: c.watch("id", timeout="5"), "timeout must be a number"),
    ],
)
def test_a_wrong_keyword_or_type_raises_before_anything_is_sent(
    tts: TTSClient, client_redis_url: str, call: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        call(tts)
    assert nothing_published(client_redis_url)


def test_cancel_of_an_ended_job_answers_from_the_record(
    tts: TTSClient, client_redis_url: str, db: redis.Redis
) -> None:
    db.hset("tts:job:done", mapping={"job_id": "done", "status": "completed"})
    assert tts.cancel("done") == "already ended: completed"
    assert nothing_published(client_redis_url)


def test_cancel_of_a_job_not_received_yet_is_sent(tts: TTSClient, client_redis_url: str) -> None:
    """No record: its submit may still wait in the queue; the cancel goes, and ends it there."""
    assert tts.cancel("nobody") == "unknown job"
    sent = published(client_redis_url, "tts.poll")
    assert [(m["task"], m["args"]) for m in sent] == [("tts.cancel", ["nobody"])]


def worker_that_cancels(url: str, store: JobStore, job_id: str, stop: threading.Event) -> None:
    """What a worker does with tts.cancel (tasks/steps): settle the job as CANCELLED."""
    while not stop.is_set():
        for message in published(url, "tts.poll"):
            assert (message["task"], message["args"]) == ("tts.cancel", [job_id])
            outcome = {"type": "tts.failed", "error": {"code": "CANCELLED", "message": "by you"}}
            store.settle(job_id, outcome, check_at=time.time())
            return
        time.sleep(0.05)


def test_cancel_sends_tts_cancel_and_answers_what_it_did(
    tts: TTSClient, client_redis_url: str, db: redis.Redis
) -> None:
    store = JobStore(db, ttl_s=60)
    assert store.create("running", {"status": "polling"}, ttl_s=60, check_at=Watch.DROP)
    stop = threading.Event()
    worker = threading.Thread(
        target=worker_that_cancels, args=(client_redis_url, store, "running", stop)
    )
    worker.start()
    try:
        assert tts.cancel("running") == "cancelled"
    finally:
        stop.set()
        worker.join()
    job = tts.get("running")
    assert job is not None
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.code == "CANCELLED"


def test_cancel_that_no_worker_takes_answers_sent(
    tts: TTSClient, client_redis_url: str, db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tts_client.client, "CANCEL_WAIT_S", 0.3)
    db.hset("tts:job:stuck", mapping={"job_id": "stuck", "status": "polling"})
    assert tts.cancel("stuck") == "sent"
    [message] = published(client_redis_url, "tts.poll")
    assert (message["task"], message["args"], message["kwargs"]) == ("tts.cancel", ["stuck"], {})


def test_without_a_job_state_redis_reads_refuse_and_cancel_only_sends(
    client_redis_url: str,
) -> None:
    with TTSClient("amqp://guest:guest@127.0.0.1:1//") as amqp:
        assert amqp.redis_url is None
        with pytest.raises(RuntimeError, match="redis_url"):
            amqp.get("x")
        with pytest.raises(RuntimeError, match="redis_url"):
            amqp.watch("x")
    with TTSClient("amqp://guest:guest@127.0.0.1:1//", redis_url=client_redis_url) as both:
        assert both.get("x") is None
