"""Another app's own Celery, sharing our broker: ``celery -A tests.support.foreign_app worker``.

What a Django or Flask project runs beside a TTS worker: Celery's defaults (the default queue
``celery``), one task that counts each run in Redis (hash :data:`RUNS`, field = its argument),
so a test can tell a task that never ran, or ran twice. Broker: ``CELERY_BROKER_URL``, which
Celery itself reads from the environment; :func:`make_app` builds the sending side in a test.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

RECORD = "foreign_app.record"
#: Redis hash on the broker's database: how many times each task ran.
RUNS = "foreign_app:runs"


def make_app(broker_url: str) -> Celery:
    """The app, on ``broker_url``, with its one task."""
    app = Celery("foreign_app", broker=broker_url, set_as_current=False)

    @app.task(name=RECORD, shared=False)
    def record(n: int) -> None:
        client = redis.Redis.from_url(broker_url)
        try:
            client.hincrby(RUNS, str(n), 1)
        finally:
            client.close()

    return app


# For the worker (celery -A): the broker Celery would read anyway.
app = make_app(os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
