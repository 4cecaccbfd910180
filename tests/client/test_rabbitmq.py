"""On RabbitMQ the client declares its queues as the worker does, so either may come first and
neither is refused; its messages land on the worker's quorum queues through the exchange ``tts``.

A private virtual host on the local RabbitMQ (tests/integration/test_rabbitmq.py's fixtures: it
skips off CI when RabbitMQ or rabbitmqctl is missing, and fails on CI). No worker is needed: the
worker's declarations come from its own code (tasks/config/celery_config.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from tasks.config.celery_config import task_queues
from tasks.config.settings import Settings
from tests.integration.test_rabbitmq import amqp_url, vhost
from tts_client import TTSClient

pytestmark = pytest.mark.integration
__all__ = ["amqp_url", "vhost"]  # the fixtures, imported for use here


def declare_as_the_worker(url: str) -> None:
    worker = Settings(CELERY_BROKER_URL=url, TTS_REDIS_URL="redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    with Connection(url) as conn:
        channel = conn.default_channel
        for queue in task_queues(worker):
            queue.bind(channel).declare()


def take(url: str, queue: str) -> list[dict[str, Any]]:
    """Every message in ``queue``, taken off it (without declaring it: it must exist)."""
    taken = []
    with Connection(url) as conn:
        channel: Any = conn.default_channel
        while (raw := channel.basic_get(queue=queue, no_ack=True)) is not None:
            message = channel.message_to_python(raw)
            args, kwargs, _ = message.decode()
            taken.append({"task": message.headers["task"], "args": args, "kwargs": kwargs})
    return taken


@pytest.fixture
def tts(amqp_url: str) -> Iterator[TTSClient]:
    with TTSClient(amqp_url) as client:
        yield client


def test_the_client_sends_to_queues_the_worker_declared(amqp_url: str, tts: TTSClient) -> None:
    declare_as_the_worker(amqp_url)
    job_id = tts.submit("Hello", "Elevenlabs-Turbo-V2.5", notify_url="https://a/h")
    assert tts.poll("run-1", "Elevenlabs-Turbo-V2.5") == "run-1"
    [submit] = take(amqp_url, "tts.submit")
    assert submit == {
        "task": "tts.submit_tts",
        "args": ["Hello", "Elevenlabs-Turbo-V2.5"],
        "kwargs": {"notify_url": "https://a/h", "job_id": job_id},
    }
    [poll] = take(amqp_url, "tts.poll")
    assert (poll["task"], poll["kwargs"]["job_id"]) == ("tts.poll_tts", "run-1")


def test_a_worker_starting_after_the_client_accepts_its_queues(amqp_url: str) -> None:
    # A fresh client first (a fresh process would be the same: it declares on its first send).
    with TTSClient(amqp_url) as first:
        first.submit("Before any worker", "Elevenlabs-Turbo-V2.5", job_id="early")
    declare_as_the_worker(amqp_url)  # raises PreconditionFailed if the declarations differ
    [early] = take(amqp_url, "tts.submit")
    assert early["kwargs"] == {"job_id": "early"}
