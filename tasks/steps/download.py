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
from tasks.steps.outcomes import fail, succeed, succeeded

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
        return succeed(ctx, job_id, storage.StoredAudio(**job.stored_audio))
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
        # Spooled audio costs nothing upstream to try again: it gets the API's retry budget.
        limit = s.max_retries if job.spooled else DOWNLOAD_MAX_RETRIES
        return retry_or_fail(ctx, d, exc, job_id, max_retries=limit)
    except errors.PermanentError as exc:
        return fail(ctx, job_id, exc, guards=downloading)
    metrics.downloaded(stored.bytes, max(0.0, ctx.clock() - started_at))
    if not succeeded(ctx, job_id, stored):
        _discard(ctx, job_id, stored)
    return job_id


def _discard(ctx: Ctx, job_id: str, stored: storage.StoredAudio) -> None:
    """The job ended another way while its audio was being stored (a cancel, its deadline):
    remove what this download stored, or nothing would (S3 keeps it until a lifecycle rule,
    a local file until retention, if either is set). Audio a duplicate download recorded
    under the same location is the job's outcome and stays."""
    job = ctx.jobs.get(job_id)
    recorded = (job.outcome or {}).get("audio") if job else None
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
