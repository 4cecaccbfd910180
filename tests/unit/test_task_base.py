"""What our processes publish (retries included) carries redacted argument text.

The message is read back from a real Redis list, as a worker or Flower would see it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tasks.adapters.base import RedactedTask
from tests.support.stack import Lane

TOKEN = "tok-77aa"
QUEUE = "test.redacted"


@pytest.fixture
def app(lanes: Callable[[], Lane]) -> Iterator[Celery]:
    url = lanes().url
    app = Celery("redacted", broker=url, task_cls=RedactedTask)
    app.conf.task_serializer = "json"

    @app.task(name="test.echo", shared=False)
    def echo(*args: Any, **kwargs: Any) -> None:
        """Never run: only published."""

    yield app
    redis.Redis.from_url(url).flushdb()
    app.close()


def published(app: Celery) -> dict[str, Any]:
    client = redis.Redis.from_url(app.conf.broker_url)
    raw = client.lpop(QUEUE)
    assert raw is not None
    headers: dict[str, Any] = json.loads(raw)["headers"]
    return headers


def test_apply_async_and_signatures_publish_redacted_text(app: Celery) -> None:
    task = app.tasks["test.echo"]
    args = ("x" * 500, "Kokoro-82m")
    kwargs = {"notify_url": f"https://h.example.com/hook?token={TOKEN}", "lease": "L1"}
    task.apply_async(args, kwargs, queue=QUEUE)
    # Task.retry re-sends through a signature built from the request: the same path.
    task.signature(args, kwargs, {"queue": QUEUE}).apply_async()

    for headers in (published(app), published(app)):
        assert TOKEN not in headers["kwargsrepr"]
        assert "L1" not in headers["kwargsrepr"]
        assert "https://h.example.com/…" in headers["kwargsrepr"]
        assert len(headers["argsrepr"]) < 100
        assert "Kokoro-82m" in headers["argsrepr"]


def test_explicit_text_wins(app: Celery) -> None:
    app.tasks["test.echo"].apply_async((1,), {"a": 2}, queue=QUEUE, kwargsrepr="{'a': '…'}")
    assert published(app)["kwargsrepr"] == "{'a': '…'}"


def test_a_plain_celery_task_would_publish_the_token(app: Celery) -> None:
    """The default this class replaces (so the tests above can fail)."""
    plain = Celery("plain", broker=app.conf.broker_url)
    plain.conf.task_serializer = "json"
    plain.send_task("test.echo", kwargs={"notify_url": f"https://h/?token={TOKEN}"}, queue=QUEUE)
    assert TOKEN in published(app)["kwargsrepr"]
    plain.close()
