"""The progress stream from both sides: entries published by the worker's own code
(tasks/steps/progress.py) read by watch() as typed updates."""

from __future__ import annotations

import time

import redis

from tasks.record.jobs import JobStore, Watch
from tasks.steps import progress
from tests.support.ctx import make_ctx
from tts_client import TTSClient


def test_watch_reads_what_the_worker_publishes(tts: TTSClient, db: redis.Redis) -> None:
    ctx, _ = make_ctx(db)
    store = JobStore(db, ttl_s=600)
    assert store.create("pub", {"status": "polling"}, ttl_s=600, check_at=Watch.DROP)
    assert progress.publish(ctx, "pub", "submitting")
    assert progress.publish(ctx, "pub", "polling", queue_position=2, eta_s=3.25)
    assert progress.publish(ctx, "pub", "polling", queue_position=0)
    assert progress.publish(ctx, "pub", "completed")
    updates = list(tts.watch("pub", timeout=5))
    assert [(u.status, u.queue_position, u.eta_s) for u in updates] == [
        ("submitting", None, None),
        ("polling", 2, 3.25),
        ("polling", 0, None),
        ("completed", None, None),
    ]
    assert all(u.at is not None and abs(u.at - time.time()) < 60 for u in updates)
