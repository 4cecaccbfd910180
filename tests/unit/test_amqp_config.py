"""RabbitMQ's branch of the Celery config: quorum queues on a topic exchange, publisher
confirms, and countdowns that Celery's native delayed delivery can carry exactly."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.utils.quorum_queues import detect_quorum_queues
from kombu.transport.native_delayed_delivery import calculate_routing_key

from tasks import names
from tasks.config.celery_config import (
    AMQP_EXCHANGE,
    BROKER_SOCKET_TIMEOUT_S,
    MIN_NATIVE_DELAY_S,
    broker_countdown_s,
    celery_config,
)
from tasks.config.settings import Settings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(broker_url: str) -> Settings:
    return Settings(CELERY_BROKER_URL=broker_url, TTS_REDIS_URL=REDIS_URL)  # type: ignore[call-arg]


def app_for(broker_url: str) -> Celery:
    app = Celery("config-test", set_as_current=False)
    app.config_from_object(celery_config(settings(broker_url)))
    return app


@pytest.mark.parametrize("url", [AMQP_URL, "amqps://u:p@mq.example.com:5671/tts", "pyamqp://h//"])
def test_every_queue_is_a_quorum_queue_on_the_topic_exchange(url: str) -> None:
    conf = celery_config(settings(url))
    # Celery's default queue is declared as a bare client declares it (test_default_queue.py).
    queues = {q.name: q for q in conf["task_queues"] if q.name != names.CELERY_DEFAULT_QUEUE}
    assert set(queues) == set(names.QUEUES.values())
    for name, queue in queues.items():
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.name == AMQP_EXCHANGE
        assert queue.exchange.type == "topic"
        assert queue.routing_key == name
        assert queue.durable


def test_amqp_publishes_with_confirms_and_has_no_visibility_timeout() -> None:
    conf = celery_config(settings(AMQP_URL))
    # Every read and write on the connection bounded: a node in alarm never answers some of
    # them (tests/reliability/test_broker_faults.py).
    assert conf["broker_transport_options"] == {
        "confirm_publish": True,
        "read_timeout": BROKER_SOCKET_TIMEOUT_S,
        "write_timeout": BROKER_SOCKET_TIMEOUT_S,
    }
    assert conf["task_default_exchange"] == AMQP_EXCHANGE
    assert conf["task_default_exchange_type"] == "topic"
    assert conf["task_create_missing_queue_type"] == "quorum"
    assert conf["task_create_missing_queue_exchange_type"] == "topic"
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"


def test_redis_keeps_plain_queues_and_its_visibility_timeout() -> None:
    conf = celery_config(settings(REDIS_URL))
    assert "confirm_publish" not in conf["broker_transport_options"]
    assert conf["broker_transport_options"]["visibility_timeout"] >= 3600
    # kombu's default waits forever on a silent socket (tests/reliability/test_broker_faults.py)
    assert conf["broker_transport_options"]["socket_timeout"] == BROKER_SOCKET_TIMEOUT_S
    for queue in conf["task_queues"]:
        assert not queue.queue_arguments
    assert "task_default_exchange_type" not in conf
    assert "task_create_missing_queue_type" not in conf


def test_celery_sees_quorum_queues_only_on_amqp() -> None:
    # What switches on the DelayedDelivery bootstep, per-consumer QoS, and the
    # celery_delayed_27 route in send_task (celery/utils/quorum_queues.py).
    assert detect_quorum_queues(app_for(AMQP_URL), "amqp")[0] is True
    assert detect_quorum_queues(app_for(REDIS_URL), "redis")[0] is False


def test_routing_resolves_every_task_to_its_quorum_queue_on_the_topic_exchange() -> None:
    app = app_for(AMQP_URL)
    for task, queue_name in names.QUEUES.items():
        route = app.amqp.router.route({"queue": queue_name}, task)
        queue = route["queue"]
        assert queue.name == queue_name
        assert queue.exchange.type == "topic"  # else Celery falls back to ETA in the worker
        assert queue.queue_arguments == {"x-queue-type": "quorum"}


@pytest.mark.parametrize(
    ("delay_s", "expected"),
    [
        (-3.0, 0),
        (0.0, 0),
        (0.05, 1),
        (0.999, 1),
        (1.0, 1),
        (1.0001, 2),
        (2.55, 3),
        (30.0, 30),
        (599.2, 600),
    ],
)
def test_on_amqp_a_countdown_is_whole_seconds_rounded_up(delay_s: float, expected: int) -> None:
    got = broker_countdown_s(delay_s, settings(AMQP_URL))
    assert got == expected
    assert isinstance(got, int)


@pytest.mark.parametrize("delay_s", [0.05, 0.5, 1.0, 1.5, 2.999, 3.0, 17.3, 600.0, 86_400.0])
def test_a_native_countdown_is_carried_exactly(delay_s: float) -> None:
    """Celery puts int(countdown) in the routing key and the countdown itself in the ETA: they
    agree only for whole seconds, and below one second Celery raises."""
    countdown = broker_countdown_s(delay_s, settings(AMQP_URL))
    assert countdown >= MIN_NATIVE_DELAY_S
    assert countdown >= delay_s  # never sooner than asked (a Retry-After stays a floor)
    assert int(countdown) == countdown
    calculate_routing_key(int(countdown), names.POLL_QUEUE)  # what Celery does; must not raise


def test_below_one_second_celery_itself_refuses() -> None:
    # The reason for the rounding: Celery 5.7 would raise this from send_task.
    with pytest.raises(ValueError, match="positive"):
        calculate_routing_key(int(0.5), names.POLL_QUEUE)


@pytest.mark.parametrize("url", [REDIS_URL, "sqs://", "memory://"])
def test_other_brokers_take_the_countdown_as_it_is(url: str) -> None:
    assert broker_countdown_s(0.4, settings(url)) == 0.4
    assert broker_countdown_s(2.55, settings(url)) == 2.55
    assert broker_countdown_s(-1.0, settings(url)) == 0
