"""A webhook's retries carry the webhook-id of its first attempt (Standard Webhooks: the receiver
deduplicates by it), against a real Redis. Issue 19, item 8: the simulation checked only that a
job's hooks share one id, which a job whose every attempt got a new id, but failed once, would
not show."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tasks import errors, steps
from tasks.record.jobs import KEY_PREFIX, Watch
from tasks.record.states import NotifyState, Status
from tasks.steps.outcomes import fail
from tasks.webhooks import delivery as webhooks
from tests.support.ctx import make_ctx

URL = "https://receiver.example/hook"


class Receiver:
    """Refuses the first ``failures`` attempts (a 5xx: retried), then accepts; keeps each id."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.ids: list[str] = []

    def __call__(self, url: str, body: dict[str, Any], *, msg_id: str) -> None:
        self.ids.append(msg_id)
        if len(self.ids) <= self.failures:
            raise errors.WebhookRefused("receiver answered 503")


@pytest.fixture
def jid(redis_client: redis.Redis) -> Iterator[str]:
    job_id = f"notify-{uuid.uuid4()}"
    yield job_id
    redis_client.delete(KEY_PREFIX + job_id)


def test_a_retried_webhook_keeps_its_webhook_id(redis_client: redis.Redis, jid: str) -> None:
    receiver = Receiver(failures=2)
    ctx, _ = make_ctx(redis_client, webhook=receiver)
    ctx.jobs.create(
        jid, {"status": Status.SUBMITTING, "notify_url": URL}, ttl_s=60, check_at=Watch.DROP
    )
    fail(ctx, jid, errors.UpstreamFailed("generation failed"))
    job = ctx.jobs.get(jid)
    assert job is not None
    assert job.outcome_id

    task_id = str(uuid.uuid4())
    results = [steps.notify(ctx, steps.Delivery("tts.notify", task_id, n), jid) for n in range(3)]

    assert [type(r) for r in results] == [steps.Retry, steps.Retry, str]
    assert receiver.ids == [webhooks.message_id(jid, job.outcome_id)] * 3
    done = ctx.jobs.get(jid)
    assert done is not None
    assert done.notify_state == NotifyState.DELIVERED
    assert done.notify_attempts == 3


def test_a_resent_webhook_keeps_its_webhook_id(redis_client: redis.Redis, jid: str) -> None:
    """The reconciler re-sends a lost notify under a new task id: once the first sender's claim
    ran out, the new one takes over with the same id."""
    receiver = Receiver(failures=1)
    now = [1_800_000_000.0]
    ctx, _ = make_ctx(redis_client, webhook=receiver, clock=lambda: now[0])
    ctx.jobs.create(
        jid, {"status": Status.SUBMITTING, "notify_url": URL}, ttl_s=60, check_at=Watch.DROP
    )
    fail(ctx, jid, errors.UpstreamFailed("generation failed"))

    first = steps.notify(ctx, steps.Delivery("tts.notify", "first-sender"), jid)
    now[0] += 3_600  # the first sender died with its retry; its claim ran out long ago
    second = steps.notify(ctx, steps.Delivery("tts.notify", "reconciler-resend"), jid)

    assert isinstance(first, steps.Retry)
    assert second == jid
    assert len(receiver.ids) == 2
    assert len(set(receiver.ids)) == 1
