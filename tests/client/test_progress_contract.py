"""The progress stream from both sides: entries published by the worker's own code
(tasks/progress.py) read by watch() as typed updates.

tasks/progress.py comes with the worker side of issue 20 (branch ``front``); until it is merged
this module skips. test_reading.py tests watch() against the contract's entries meanwhile.
"""

from __future__ import annotations

import time

import pytest
import redis

from tasks.record.jobs import JobStore
from tests.support.ctx import make_ctx
from tts_client import TTSClient

progress = pytest.importorskip("tasks.progress", reason="the worker's progress stream (front)")


def test_watch_reads_what_the_worker_publishes(tts: TTSClient, db: redis.Redis) -> None:
    ctx, _ = make_ctx(db)
    store = JobStore(db, ttl_s=600)
    assert store.create("pub", {"status": "polling"}, ttl_s=600, check_at=None)
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
