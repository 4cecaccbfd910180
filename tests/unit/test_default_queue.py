"""Celery's default queue ``celery``: consumed only when TTS_CONSUME_DEFAULT_QUEUE is on (off
by default: on a shared broker it is the app's), and declared exactly as a client with no
configuration declares it (RabbitMQ refuses a mismatch)."""

from __future__ import annotations

import pytest
from celery import Celery

from tasks import names
from tasks.config.celery_config import celery_config
from tasks.config.settings import Settings

BROKERS = ["redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//"]


def conf_for(broker_url: str, **env: str) -> dict[str, object]:
    s = Settings(CELERY_BROKER_URL=broker_url, TTS_REDIS_URL=BROKERS[0], **env)  # type: ignore[call-arg]
    return celery_config(s)


def queue_names(conf: dict[str, object]) -> set[str]:
    return {q.name for q in conf["task_queues"]}  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", BROKERS)
def test_default_queue_is_consumed_only_when_turned_on(url: str) -> None:
    ours = set(names.QUEUES.values())
    assert queue_names(conf_for(url)) == ours
    assert queue_names(conf_for(url, TTS_CONSUME_DEFAULT_QUEUE="true")) == ours | {"celery"}


@pytest.mark.parametrize("url", BROKERS)
def test_default_queue_is_declared_as_a_bare_client_declares_it(url: str) -> None:
    conf = conf_for(url, TTS_CONSUME_DEFAULT_QUEUE="true")
    [ours] = [q for q in conf["task_queues"] if q.name == "celery"]  # type: ignore[attr-defined]
    bare = Celery("bare", broker=url, set_as_current=False).amqp.default_queue
    assert bare.name == names.CELERY_DEFAULT_QUEUE
    for attr in ("routing_key", "durable", "exclusive", "auto_delete", "queue_arguments"):
        assert getattr(ours, attr) == getattr(bare, attr), attr
    assert (ours.exchange.name, ours.exchange.type, ours.exchange.durable) == (
        bare.exchange.name,
        bare.exchange.type,
        bare.exchange.durable,
    )


def test_the_worker_uses_the_consumer_that_hands_foreign_tasks_back() -> None:
    from workers import consumer

    conf = conf_for(BROKERS[0])
    module, _, name = str(conf["worker_consumer"]).partition(":")
    assert (module, name) == (consumer.__name__, consumer.Consumer.__name__)
