"""Ending a job (first outcome wins, then its webhook is queued) and when a step is overdue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import redis

from tasks import errors, metrics
from tasks.audio import storage
from tasks.record import tenants
from tasks.record.jobs import Job, Priority
from tasks.record.states import Status
from tasks.steps import progress

if TYPE_CHECKING:
    from tasks.steps.context import Ctx

log = logging.getLogger(__name__)


def check_at(ctx: Ctx, after_s: float) -> float:
    """When a step planned ``after_s`` seconds from now counts as lost if it has not acted.

    Beyond the plan: the recovery grace, and one HTTP call's worth of time (a step that is
    running but waiting on a slow answer is not lost).
    """
    s = ctx.settings
    budget_s = s.recovery_grace_s + s.http_connect_timeout_s + s.http_read_timeout_s
    return ctx.clock() + max(0.0, after_s) + budget_s


def fail(
    ctx: Ctx,
    job_id: str,
    exc: errors.TTSError,
    *,
    lease: tuple[str, int] | None = None,
    guards: Mapping[str, str | None] | None = None,
    polls: int | None = None,
) -> str:
    """Record a failed outcome (first writer wins) and queue its webhook; returns the job id.

    ``lease``/``guards``: only while the job is in that state (see :meth:`JobStore.settle`).
    ``polls``: the poll count including the status call that found the failure, if one did.
    """
    failed(ctx, job_id, exc, lease=lease, guards=guards, polls=polls)
    return job_id


def failed(
    ctx: Ctx,
    job_id: str,
    exc: errors.TTSError,
    *,
    lease: tuple[str, int] | None = None,
    guards: Mapping[str, str | None] | None = None,
    polls: int | None = None,
    outcome_id: str | None = None,
) -> bool:
    """:func:`fail`, saying whether this call recorded the outcome (True once per job).
    ``outcome_id``: names the outcome (a ``tts.cancel``'s, from its task id); random if not
    given."""
    outcome = {"type": "tts.failed", "error": exc.as_dict()}
    if not ctx.jobs.settle(
        job_id,
        outcome,
        lease=lease,
        guards=guards,
        check_at=check_at(ctx, 0),
        polls=polls,
        outcome_id=outcome_id,
    ):
        return False
    if isinstance(exc, errors.InsufficientBalance):
        # Every job fails like this until the account is topped up: one line to alert on.
        log.error("job %s failed: INSUFFICIENT_BALANCE: top up the NanoGPT account", job_id)
    else:
        log.info("job %s failed: %s", job_id, exc.code)
    ended(ctx, job_id, exc.code)
    progress.publish(ctx, job_id, Status.FAILED)
    ctx.dispatch.notify(job_id)
    return True


def succeed(ctx: Ctx, job_id: str, audio: storage.StoredAudio, *, job: Job | None = None) -> str:
    """Record a completed outcome (first writer wins, from ``downloading``); queue its webhook.
    ``job``: the record as the step loaded it, if it did (its lane is counted from it)."""
    succeeded(ctx, job_id, audio, job=job)
    return job_id


def succeeded(ctx: Ctx, job_id: str, audio: storage.StoredAudio, *, job: Job | None = None) -> bool:
    """:func:`succeed`, saying whether this call recorded the outcome (True once per job)."""
    outcome = {"type": "tts.completed", "audio": audio.as_dict()}
    if not ctx.jobs.settle(
        job_id, outcome, guards={"status": Status.DOWNLOADING}, check_at=check_at(ctx, 0)
    ):
        return False
    log.info("job %s completed: %d bytes", job_id, audio.bytes)
    ended(ctx, job_id, "completed", job=job)
    progress.publish(ctx, job_id, Status.COMPLETED)
    ctx.dispatch.notify(job_id)
    return True


def discard_unrecorded(ctx: Ctx, job_id: str, stored: storage.StoredAudio) -> None:
    """The job ended another way while its audio was being stored (a cancel, its deadline):
    remove what this step stored, or nothing would (S3 keeps it until a lifecycle rule, a
    local file until retention, if either is set). Audio that the record names at the same
    place (the outcome a duplicate recorded, or what an earlier run of the submit stored) is
    the job's and stays."""
    job = ctx.jobs.get(job_id)
    if job is not None:
        for recorded in ((job.outcome or {}).get("audio"), job.stored_audio):
            if isinstance(recorded, dict) and _same_place(recorded, stored):
                return
    try:
        ctx.audio_store.delete(stored)
    except errors.TTSError as exc:
        log.warning("job %s ended meanwhile; its audio could not be removed: %s", job_id, exc)
        return
    log.info("job %s ended while its audio was stored; removed it", job_id)


def _same_place(recorded: dict[str, object], stored: storage.StoredAudio) -> bool:
    """Whether the recorded audio is where ``stored`` is (a presigned URL changes; the path,
    or bucket and key, do not; a store with neither is compared by URL)."""
    place = {k: v for k, v in stored.as_dict().items() if k in ("path", "bucket", "key")}
    place = place or {"url": stored.url}
    return all(recorded.get(k) == v for k, v in place.items())


def ended(ctx: Ctx, job_id: str, outcome: str, *, job: Job | None = None) -> None:
    """After the outcome was recorded (once per job): count it (``completed`` or the error
    code), and by the job's lane; and the job no longer counts in its tenant's jobs in flight
    (when that is capped). The lane is read from the record; a job store that fails here only
    costs the lane's count and the release (which heals at the job's deadline:
    tasks/record/tenants.py), never the webhook queued next. ``job``: the record as the step
    loaded it, whose lane is read there instead (a job's lane never changes)."""
    metrics.job_finished(outcome)
    try:
        raw_tenant: object
        priority: object
        if job is not None:
            raw_tenant, priority = job.tenant, job.priority
        else:
            key = ctx.jobs.key(job_id)
            raw_tenant, priority = ctx.jobs.redis.hmget(key, ["tenant", "priority"])
        tenant = str(raw_tenant) if raw_tenant else None
        lane = str(priority or Priority.NORMAL)
        metrics.lane_finished(lane, tenant, completed=outcome == "completed")
        if ctx.settings.tenant_max_in_flight and tenant:
            tenants.release(ctx.jobs.redis, tenant, job_id)
    except redis.RedisError as exc:
        log.warning(
            "job %s ended; its lane was not counted nor its tenant's cap released: %s", job_id, exc
        )
