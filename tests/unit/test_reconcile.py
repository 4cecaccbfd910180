"""Which step a job waits on, and that a scan re-sends exactly the overdue ones."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from tasks.record.jobs import DUE_KEY, Job
from tasks.record.states import next_step
from tasks.sweeps import reconcile
from tests.support.ctx import make_ctx


def job(**fields: Any) -> Job:
    return Job(job_id="j", **{"status": "polling", **fields})


@pytest.mark.parametrize(
    ("fields", "step"),
    [
        ({"token": "t", "seq": "3", "run_id": "r", "model": "m"}, "poll"),
        ({"token": "t", "seq": "-1"}, None),
        ({"status": "downloading"}, "download"),
        (
            {"status": "submitting", "request": {"text": "x", "model": "m"}, "owner": "id"},
            "submit",
        ),
        ({"status": "submitting"}, None),
        (
            {"status": "completed", "outcome": {"type": "tts.completed"}, "notify_state": "queued"},
            "notify",
        ),
        (
            {"status": "failed", "outcome": {"type": "tts.failed"}, "notify_state": "delivered"},
            None,
        ),
        ({"status": "failed", "outcome": {"type": "tts.failed"}, "notify_state": "none"}, None),
    ],
)
def test_next_step(fields: dict[str, Any], step: str | None) -> None:
    assert next_step(job(**fields)) == step


def test_scan_resends_only_overdue(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_client.delete(DUE_KEY)
    ctx, _ = make_ctx(redis_client, env={"TTS_RECOVERY_GRACE": "30"})
    store = ctx.jobs
    now = time.time()
    late, early, done = (f"r-{uuid.uuid4().hex}" for _ in range(3))
    for jid, check_at in ((late, now - 5), (early, now + 60)):
        store.start_chain(
            jid, {"run_id": jid, "model": "m"}, deadline_at=now + 30, check_at=check_at
        )
    store.create(
        done,
        {"status": "failed", "outcome": {"type": "tts.failed"}, "notify_state": "delivered"},
        ttl_s=30,
        check_at=now - 5,
    )
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(
        reconcile, "resend", lambda _ctx, j, step, **_: sent.append((j.job_id, step)) or True
    )

    counts = reconcile.scan(ctx, now=now)

    assert sent == [(late, "poll")]
    assert counts == {"poll": 1}
    assert redis_client.zscore(DUE_KEY, late) == pytest.approx(now + 30)
    assert redis_client.zscore(DUE_KEY, done) is None  # nothing more is due: dropped
    assert reconcile.scan(ctx, now=now) == {}  # not re-sent twice
