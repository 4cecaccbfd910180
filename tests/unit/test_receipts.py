"""Receipts the job store refused (workers/receipts.py), against a real Redis and one where
nothing listens: a submit received while the store refused gets its record, on the watch,
once the store answers; while it still refuses, nothing is lost; recording twice is safe."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tasks import names
from tasks.record.jobs import DUE_KEY, KEY_PREFIX
from tasks.record.states import Status
from tests.support.ctx import make_ctx
from workers import receipts
from workers.embedded_redis import free_port

MODEL = "Elevenlabs-Turbo-V2.5"


@pytest.fixture(autouse=True)
def nothing_kept() -> Iterator[None]:
    receipts._kept.clear()
    yield
    receipts._kept.clear()


def submit(task_id: str) -> receipts.Receipt:
    return receipts.Receipt(names.SUBMIT_TTS, task_id, ["Hello", MODEL], {}, None)


def refusing() -> redis.Redis:
    """A client of a port nothing listens on: every command is refused."""
    return redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)


def test_a_kept_submit_is_recorded_on_the_watch_once_the_store_answers(
    redis_client: redis.Redis,
) -> None:
    task_id = f"receipt-{uuid.uuid4().hex}"
    receipts.keep(submit(task_id))

    down, _ = make_ctx(refusing())
    assert receipts.record_again(down) == 0
    assert receipts.kept() == 1  # refused again: still kept

    up, _ = make_ctx(redis_client)
    assert receipts.record_again(up) == 1
    assert receipts.kept() == 0
    assert redis_client.hget(KEY_PREFIX + task_id, "status") == Status.SUBMITTING
    assert redis_client.zscore(DUE_KEY, task_id) is not None  # the reconciler watches it


def test_the_oldest_first_and_the_rest_kept_when_the_store_refuses(
    redis_client: redis.Redis,
) -> None:
    ids = [f"receipt-{uuid.uuid4().hex}" for _ in range(3)]
    for task_id in ids:
        receipts.keep(submit(task_id))
    up, _ = make_ctx(redis_client)
    assert receipts.record_again(up) == 3
    assert [redis_client.exists(KEY_PREFIX + t) for t in ids] == [1, 1, 1]


def test_recording_a_receipt_twice_makes_one_record(redis_client: redis.Redis) -> None:
    task_id = f"receipt-{uuid.uuid4().hex}"
    up, _ = make_ctx(redis_client)
    receipts.keep(submit(task_id))
    assert receipts.record_again(up) == 1
    before = redis_client.hgetall(KEY_PREFIX + task_id)
    receipts.keep(submit(task_id))
    assert receipts.record_again(up) == 1
    assert redis_client.hgetall(KEY_PREFIX + task_id) == before


class Request:
    """What Celery's ``task_received`` hands the handler: the fields it reads."""

    def __init__(self, task_id: str) -> None:
        self.name, self.id, self.eta = names.SUBMIT_TTS, task_id, None
        self.args, self.kwargs = ["Hello", MODEL], {}


def test_the_receipt_handler_keeps_what_the_store_refused(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    from workers import signals

    down, _ = make_ctx(refusing())
    monkeypatch.setattr(signals.runtime, "context", lambda: down)
    task_id = f"receipt-{uuid.uuid4().hex}"
    signals.record_received(request=Request(task_id))
    assert receipts.kept() == 1

    up, _ = make_ctx(redis_client)
    assert receipts.record_again(up) == 1
    assert redis_client.hget(KEY_PREFIX + task_id, "status") == Status.SUBMITTING
