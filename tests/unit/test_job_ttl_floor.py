"""TTS_JOB_TTL covers the broker's whole redelivery window, or the worker will not start."""

from __future__ import annotations

import pytest

from tasks.config import celery_config
from tests.support.ctx import settings
from workers import signals

REDIS_BROKER = "redis://127.0.0.1:1/0"
AMQP_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.mark.parametrize(
    ("broker", "window_s"),
    [
        # The visibility timeout (an hour) plus the longest countdown (the webhook's 600 s).
        (REDIS_BROKER, 3600 + 600),
        # RabbitMQ's default consumer_timeout (30 min) plus the same countdown.
        (AMQP_BROKER, 1800 + 600),
    ],
)
def test_the_window_by_broker(broker: str, window_s: int) -> None:
    s = settings(CELERY_BROKER_URL=broker)
    assert celery_config.redelivery_window_s(s) == window_s


def test_the_window_follows_a_longer_countdown() -> None:
    # A 20-minute retry wait: the visibility timeout grows to 4x it, and the window with it.
    s = settings(
        CELERY_BROKER_URL=REDIS_BROKER,
        TTS_RETRY_MAX_DELAY="1200",
        TTS_WEBHOOK_MAX_RETRY_DELAY="1200",
    )
    assert celery_config.redelivery_window_s(s) == 4 * 1200 + 1200


@pytest.mark.parametrize("broker", [REDIS_BROKER, AMQP_BROKER])
def test_a_ttl_below_the_window_refuses_to_start(broker: str) -> None:
    window_s = celery_config.redelivery_window_s(settings(CELERY_BROKER_URL=broker))
    short = settings(CELERY_BROKER_URL=broker, TTS_JOB_TTL=str(window_s - 1))
    with pytest.raises(signals.ConfigurationError) as refused:
        signals.check_job_ttl(short)
    message = str(refused.value)
    assert f"TTS_JOB_TTL is {window_s - 1} s" in message
    assert f"at least {window_s}" in message
    assert "POST its text twice" in message


@pytest.mark.parametrize("broker", [REDIS_BROKER, AMQP_BROKER])
def test_a_ttl_at_the_window_or_the_default_starts(broker: str) -> None:
    window_s = celery_config.redelivery_window_s(settings(CELERY_BROKER_URL=broker))
    signals.check_job_ttl(settings(CELERY_BROKER_URL=broker, TTS_JOB_TTL=str(window_s)))
    signals.check_job_ttl(settings(CELERY_BROKER_URL=broker))  # 7 days


def test_the_finding_two_seconds_refuses() -> None:
    """The review's reproduction: with TTS_JOB_TTL=2 a redelivered submit re-created its
    record and POSTed again. Such a worker no longer starts."""
    with pytest.raises(signals.ConfigurationError):
        signals.check_job_ttl(settings(CELERY_BROKER_URL=REDIS_BROKER, TTS_JOB_TTL="2"))
