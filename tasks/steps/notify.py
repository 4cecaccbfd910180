"""The notify step: the outcome's webhook, signed, claimed by one sender, retried until it is
accepted, refused for good, or its retry period runs out."""

from __future__ import annotations

import logging

from tasks import errors, logctx, metrics
from tasks.pacing import schedule
from tasks.record.states import NotifyState, notify_pending
from tasks.steps.base import NOTIFY_LEASE_SLACK_S, Delivery, Result, Retry, named_job, poisoned
from tasks.steps.context import Ctx
from tasks.steps.outcomes import check_at
from tasks.steps.reuse import wake
from tasks.webhooks import delivery as webhooks

log = logging.getLogger(__name__)


def notify(ctx: Ctx, d: Delivery, job_id: object) -> Result:
    """POST the job's outcome to its ``notify_url``, signed; retried until accepted or expired."""
    named = named_job(d, job_id)
    if named is None:
        return ""  # a crafted message naming no job: nothing to do, nothing to record
    job_id = named
    logctx.bind_job(job_id)
    store = ctx.jobs
    job, deliveries = store.load(job_id, delivery=d.step())
    if job is None or not notify_pending(job):
        return job_id
    if job.notify_attempts == 0:
        # Identical requests waiting on this job go on (tasks/steps/reuse.py). Here, not at
        # the settle: this step is sent with every outcome and re-sent by the reconciler
        # until it has run; after its first attempt there is nobody left to wake.
        wake(ctx, job)
    if not job.notify_url:
        store.finish_notify(job_id, NotifyState.NONE)
        return job_id
    if poisoned(ctx, d, job_id, deliveries):
        return job_id
    s = ctx.settings
    delay_s = schedule.retry_delay_s(
        d.retries, base_s=s.webhook_retry_delay_s, max_s=s.webhook_max_retry_delay_s
    )
    if not store.claim_notify(job_id, d.task_id, lease_s=delay_s + NOTIFY_LEASE_SLACK_S):
        return job_id
    assert job.outcome is not None  # notify_pending says so
    body = webhooks.outcome_body(
        job_id,
        job.run_id,
        job.model,
        job.outcome,
        cost=job.cost,
        payment_source=job.payment_source,
        currency=job.currency,
    )
    if "audio" in body:
        # A presigned URL expires: each attempt carries one signed now, not at download time.
        body["audio"] = ctx.audio_store.fresh(body["audio"])
    attempts = job.notify_attempts + 1
    try:
        ctx.webhook(job.notify_url, body, msg_id=webhooks.message_id(job_id, job.outcome_id))
    except errors.TransientError as exc:
        now = ctx.clock()
        started_at = job.finished_at or now
        if now + delay_s - started_at > s.webhook_retry_period_s:
            log.error("job %s: webhook given up after %d attempts: %s", job_id, attempts, exc)
            metrics.webhook("expired")
            store.finish_notify(
                job_id, NotifyState.EXPIRED, notify_attempts=attempts, notify_error=exc.message
            )
            return job_id
        log.warning(
            "job %s: webhook attempt %d failed (%s); next in %.1fs", job_id, attempts, exc, delay_s
        )
        metrics.webhook("failed")
        store.update(
            job_id,
            {"notify_attempts": attempts, "notify_error": exc.message},
            check_at=check_at(ctx, delay_s + NOTIFY_LEASE_SLACK_S),
        )
        return Retry(delay_s, exc)
    except errors.PermanentError as exc:
        gone = isinstance(exc, errors.WebhookGone)
        state: metrics.WebhookResult = "gone" if gone else "refused"
        log.warning("job %s: webhook %s: %s", job_id, state, exc)
        metrics.webhook(state)
        store.finish_notify(
            job_id,
            NotifyState.GONE if gone else NotifyState.REFUSED,
            notify_attempts=attempts,
            notify_error=exc.message,
        )
        return job_id
    metrics.webhook("delivered")
    store.finish_notify(
        job_id, NotifyState.DELIVERED, notify_attempts=attempts, notified_at=ctx.clock()
    )
    return job_id
