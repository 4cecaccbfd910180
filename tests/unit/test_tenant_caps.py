"""Per-tenant caps (tasks/record/tenants.py, the submit step): a tenant at its jobs in flight or
its spend today ends its next submit as TENANT_LIMIT before any NanoGPT call; other tenants and
jobs without a tenant go on; the count heals as jobs end, or at their deadline. Against a real
Redis, with a fake NanoGPT that counts POSTs (the budget off: caps are not about the rate)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tasks import errors, names, steps
from tasks.audio.storage import StoredAudio
from tasks.nanogpt import validation
from tasks.record import tenants
from tasks.record.jobs import KEY_PREFIX, Job, Priority
from tasks.steps.outcomes import fail, succeeded
from tests.support.ctx import make_ctx
from tests.unit.test_budget_steps import MODEL, Upstream

TENANTS = ("acme", "other")


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    def wipe() -> None:
        keys = [
            *redis_client.scan_iter("tts:tenant:*"),
            *redis_client.scan_iter(f"{KEY_PREFIX}tc-*"),
        ]
        if keys:
            redis_client.delete(*keys)

    wipe()
    yield redis_client
    wipe()


def submit(ctx: object, tenant: str | None) -> Job:
    """A caller's submit of ``tenant``, run as its worker runs it."""
    jid = f"tc-{uuid.uuid4().hex}"
    d = steps.Delivery(names.SUBMIT_TTS, jid)
    assert steps.submit(ctx, d, "Hello", MODEL, job_id=jid, tenant=tenant) == jid  # type: ignore[arg-type]
    job = ctx.jobs.get(jid)  # type: ignore[attr-defined]
    assert job is not None
    return job


def code(job: Job) -> str | None:
    return job.outcome["error"]["code"] if job.outcome and "error" in job.outcome else None


def test_a_tenant_at_its_jobs_in_flight_is_refused_before_any_call(client: redis.Redis) -> None:
    upstream = Upstream()
    ctx, _ = make_ctx(client, env={"TTS_TENANT_MAX_IN_FLIGHT": "2"}, upstream=upstream)
    first, second = submit(ctx, "acme"), submit(ctx, "acme")
    assert (first.status, second.status) == ("polling", "polling")
    third = submit(ctx, "acme")
    assert (third.status, code(third)) == ("failed", "TENANT_LIMIT")
    assert third.outcome is not None
    assert "TTS_TENANT_MAX_IN_FLIGHT" in third.outcome["error"]["message"]
    assert third.posts == 0
    assert upstream.posts == 2
    # Another tenant, and a job without one, are not held back by acme's cap.
    assert submit(ctx, "other").status == "polling"
    assert submit(ctx, None).status == "polling"
    assert upstream.posts == 4

    # One of acme's jobs ends: a place is free again.
    fail(ctx, first.job_id, errors.Cancelled("cancelled"))
    assert submit(ctx, "acme").status == "polling"
    assert submit(ctx, "acme").status == "failed"


def test_a_submit_run_again_is_not_counted_twice(client: redis.Redis) -> None:
    now = 1_800_000_000.0
    args = {"now": now, "deadline_at": now + 60, "max_in_flight": 1, "max_spend": 0.0}
    assert tenants.admit(client, "acme", "j1", **args) == tenants.ADMITTED
    assert tenants.admit(client, "acme", "j1", **args) == tenants.ADMITTED  # a re-run
    assert tenants.admit(client, "acme", "j2", **args) == tenants.IN_FLIGHT_FULL
    assert tenants.in_flight(client, "acme", now=now) == 1


def test_a_lost_release_heals_at_the_jobs_deadline(client: redis.Redis) -> None:
    now = 1_800_000_000.0
    args = {"max_in_flight": 1, "max_spend": 0.0}
    assert tenants.admit(client, "acme", "j1", now=now, deadline_at=now + 60, **args) == 1
    # j1's worker died between its outcome and the release: nothing removes it but time.
    later = now + 61
    assert tenants.admit(client, "acme", "j2", now=later, deadline_at=later + 60, **args) == 1


def test_a_tenant_at_its_spend_today_is_refused(client: redis.Redis) -> None:
    upstream = Upstream()  # each ticket says 0.01 USD
    env = {"TTS_TENANT_MAX_SPEND_PER_DAY": "0.02"}
    ctx, _ = make_ctx(client, env=env, upstream=upstream)
    assert submit(ctx, "acme").status == "polling"
    assert submit(ctx, "acme").status == "polling"
    assert tenants.spend_today(client, "acme", now=ctx.clock()) == pytest.approx(0.02)
    third = submit(ctx, "acme")
    assert (third.status, code(third)) == ("failed", "TENANT_LIMIT")
    assert third.outcome is not None
    assert "TTS_TENANT_MAX_SPEND_PER_DAY" in third.outcome["error"]["message"]
    assert upstream.posts == 2
    assert submit(ctx, "other").status == "polling"


def test_without_caps_nothing_is_counted(client: redis.Redis) -> None:
    upstream = Upstream()
    ctx, _ = make_ctx(client, upstream=upstream)
    for _ in range(5):
        assert submit(ctx, "acme").status == "polling"
    assert list(client.scan_iter("tts:tenant:*")) == []


def test_a_lane_of_its_own_is_kept_with_a_capped_job(client: redis.Redis) -> None:
    upstream = Upstream()
    ctx, _ = make_ctx(client, env={"TTS_TENANT_MAX_IN_FLIGHT": "1"}, upstream=upstream)
    jid = f"tc-{uuid.uuid4().hex}"
    request = validation.submit_request("Hello", MODEL)
    lane = validation.Lane("acme", Priority.INTERACTIVE)
    assert steps.accept_submit(ctx, jid, request, None, owner=jid, lane=lane)
    steps.submit(ctx, steps.Delivery(names.SUBMIT_TTS, jid), "Hello", MODEL, job_id=jid)
    job = ctx.jobs.get(jid)
    assert job is not None
    assert (job.status, job.tenant, job.priority) == ("polling", "acme", "interactive")


def lane_jobs(tenant: str, priority: str, result: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"priority": priority, "tenant": tenant, "result": result}
    return REGISTRY.get_sample_value("tts_lane_jobs_finished_total", labels) or 0.0


def test_an_ended_job_is_counted_by_its_lane(client: redis.Redis) -> None:
    ctx, _ = make_ctx(client, env={"TTS_TENANT_MAX_IN_FLIGHT": "1"}, upstream=Upstream())
    before = lane_jobs("acme", "normal", "failed"), lane_jobs("acme", "normal", "completed")
    first = submit(ctx, "acme")
    assert submit(ctx, "acme").status == "failed"  # at its cap: TENANT_LIMIT, one failed
    fail(ctx, first.job_id, errors.Cancelled("cancelled"))
    after = lane_jobs("acme", "normal", "failed"), lane_jobs("acme", "normal", "completed")
    assert after == (before[0] + 2, before[1])


def test_a_job_store_failing_after_the_outcome_still_queues_the_webhook(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane's count and the cap's release come after the outcome is recorded; a job store
    that fails then costs those (the release heals at the deadline), not the webhook."""
    ctx, outbox = make_ctx(client, env={"TTS_TENANT_MAX_IN_FLIGHT": "1"}, upstream=Upstream())
    job = submit(ctx, "acme")

    def refused(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(ctx.jobs.redis, "hmget", refused)
    fail(ctx, job.job_id, errors.Cancelled("cancelled"))
    assert names.NOTIFY in outbox.names()


def test_a_completed_job_handed_its_record_is_counted_by_its_lane_without_reading_it(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download step hands the record it loaded: the lane is counted from it, with no
    read of the job store (one round trip less per job)."""
    ctx, _ = make_ctx(client, upstream=Upstream())
    job = submit(ctx, "acme")
    client.hset(KEY_PREFIX + job.job_id, "status", "downloading")
    before = lane_jobs("acme", "normal", "completed")

    def refused(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("the lane is not read from the job store")

    monkeypatch.setattr(ctx.jobs.redis, "hmget", refused)
    audio = StoredAudio("audio/wav", 4, "0" * 64, "file:///tmp/a.wav", path="/tmp/a.wav")
    assert succeeded(ctx, job.job_id, audio, job=job)
    assert lane_jobs("acme", "normal", "completed") == before + 1
