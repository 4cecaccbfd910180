"""The download step: the audio into the audio store, from its URL or from the spool, or only
its record when the submit stored it already."""

from __future__ import annotations

import logging

from tasks import errors, logctx, metrics
from tasks.audio import storage
from tasks.record.jobs import Job
from tasks.record.states import Status, notify_pending
from tasks.steps.base import (
    DOWNLOAD_MAX_RETRIES,
    Delivery,
    Result,
    named_job,
    poisoned,
    retry_or_fail,
)
from tasks.steps.context import Ctx
from tasks.steps.outcomes import discard_unrecorded, fail, succeed, succeeded

log = logging.getLogger(__name__)


def download(ctx: Ctx, d: Delivery, job_id: object) -> Result:
    """Store the job's audio (fetched from its URL, or from the spool), record the outcome."""
    named = named_job(d, job_id)
    if named is None:
        return ""  # a crafted message naming no job: nothing to do, nothing to record
    job_id = named
    logctx.bind_job(job_id)
    job, deliveries = ctx.jobs.load(job_id, delivery=d.step())
    if job is None:
        log.error("download for unknown job %s dropped", job_id)
        return job_id
    if job.outcome is not None:
        # A redelivery after the outcome was recorded: make sure the webhook is on its way.
        if notify_pending(job):
            ctx.dispatch.notify(job_id)
        return job_id
    if job.status != Status.DOWNLOADING:
        log.warning(
            "job %s: download while %s (stale or crafted message); ignored", job_id, job.status
        )
        return job_id
    if poisoned(ctx, d, job_id, deliveries):
        return job_id
    s = ctx.settings
    downloading = {"status": Status.DOWNLOADING}
    started_at = ctx.clock()
    if job.stored_audio is not None:
        # The submit stored the audio it was answered with: only the outcome is left to record.
        return succeed(ctx, job_id, storage.StoredAudio(**job.stored_audio), job=job)
    try:
        if job.spooled:
            stored = _store_spooled(ctx, job)
        elif job.audio_url:
            stored = ctx.fetch(
                job.audio_url,
                store=ctx.audio_store,
                job_id=job_id,
                max_bytes=s.max_audio_bytes,
                timeout_s=s.download_timeout_s,
            )
        else:
            return fail(
                ctx,
                job_id,
                errors.InvalidResponse("no audio URL recorded for the job"),
                guards=downloading,
            )
    except errors.TransientError as exc:
        return retry_or_fail(ctx, d, exc, job_id, max_retries=_retry_budget(ctx, job, exc))
    except errors.PermanentError as exc:
        return fail(ctx, job_id, exc, guards=downloading)
    metrics.downloaded(stored.bytes, max(0.0, ctx.clock() - started_at))
    if not succeeded(ctx, job_id, stored, job=job):
        discard_unrecorded(ctx, job_id, stored)
    return job_id


def _retry_budget(ctx: Ctx, job: Job, exc: errors.TransientError) -> int:
    """How many retries the fault may take: the audio host's few (each stalled attempt holds a
    slot up to the wall clock), or the API's budget when trying again costs nothing upstream:
    audio from the spool, or our own audio store refusing (a full or read-only disk, S3 down),
    which is no fault of the host's and is cleared by whoever runs the store, in minutes."""
    if job.spooled or isinstance(exc, errors.StorageUnavailable):
        return ctx.settings.max_retries
    return DOWNLOAD_MAX_RETRIES


def _store_spooled(ctx: Ctx, job: Job) -> storage.StoredAudio:
    audio = ctx.jobs.spooled_audio(job.job_id)
    if audio is None:
        raise errors.StorageFailed(
            "the audio NanoGPT answered with expired before it could be stored"
        )
    s = ctx.settings
    return storage.store_bytes(
        audio,
        store=ctx.audio_store,
        job_id=job.job_id,
        content_type=job.content_type or "",
        max_bytes=s.max_audio_bytes,
        timeout_s=s.download_timeout_s,
    )
