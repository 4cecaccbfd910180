"""A job's identity and its first record: made by the step, or earlier, when a worker receives
the message (:mod:`tasks.adapters.received`), by the same functions."""

from __future__ import annotations

import logging
import uuid

from tasks import errors, logctx
from tasks.nanogpt import validation
from tasks.record import cancels
from tasks.record.jobs import Watch
from tasks.record.states import Status
from tasks.steps import progress
from tasks.steps.base import Delivery
from tasks.steps.context import Ctx
from tasks.steps.outcomes import fail, failed

log = logging.getLogger(__name__)


def job_identity(d: Delivery, job_id: object) -> str:
    """The id of the job a submit starts: the caller's ``job_id``, else the message's task id,
    which Celery keeps across ``retry()`` and redelivery, and the reconciler re-sends under.
    Raises :class:`errors.InvalidInput` for a bad ``job_id``."""
    return validation.job_id(d.task_id if job_id is None else job_id)


def usable_job_id(d: Delivery, job_id: object) -> str:
    """The id a job is known by: the caller's ``job_id``, else the message's task id, which
    Celery keeps across ``retry()`` and redelivery (a random id would make every retry a new
    job). A task id that is no usable job id (a crafted message) gets a fresh uuid."""
    try:
        return validation.job_id(d.task_id if job_id is None else job_id)
    except errors.InvalidInput:
        try:
            return validation.job_id(d.task_id)
        except errors.InvalidInput:
            return str(uuid.uuid4())


def reject(
    ctx: Ctx, d: Delivery, job_id: object, exc: errors.InvalidInput, notify_url: object
) -> str:
    """Bad arguments: record an INVALID_INPUT outcome under a usable job id, lose nothing."""
    jid = usable_job_id(d, job_id)
    logctx.bind_job(jid)
    try:
        url = validation.notify_url(notify_url)
    except errors.InvalidInput:
        url = None
    # Owned by this message: a re-run of it (its reply lost, or a redelivery) finds its own
    # record and finishes the work: the outcome and its webhook (settle: first outcome wins).
    fields = {"status": Status.FAILED, "notify_url": url}
    if ctx.jobs.create(jid, fields, ttl_s=0, check_at=Watch.DROP, owner=d.task_id):
        log.warning("job %s rejected: %s", jid, exc.message)
        fail(ctx, jid, exc)
    return jid


def received_check_at(ctx: Ctx, start_at: float | None) -> float:
    """When a message accepted but not yet started counts as lost (its worker died holding it)."""
    now = ctx.clock()
    return max(now, start_at or now) + ctx.settings.recovery_grace_s


def accept_submit(
    ctx: Ctx,
    job_id: str,
    request: validation.SubmitRequest,
    notify_url: str | None,
    *,
    owner: str,
    start_at: float | None = None,
    lane: validation.Lane | None = None,
) -> bool:
    """Make the job's record (``submitting``) if it is new; True if this call made it (or
    this same message did, earlier). ``lane``: its tenant and priority (default: none, normal).

    The request is kept while the POST may still be sent, so the reconciler can re-send a
    submit whose message was lost (it goes once NanoGPT has accepted it), and the job gets a
    deadline like a poll chain, so nothing can wait outside the reconciler's sight.
    """
    s = ctx.settings
    now = ctx.clock()
    # From when it may start: a caller's countdown does not eat into the deadline.
    deadline_at = max(now, start_at or now) + s.poll_timeout_s
    fields = {
        "status": Status.SUBMITTING,
        "model": request.model,
        "notify_url": notify_url,
        "request": {
            **request.body(),
            **request.steering(),
            "notify_url": notify_url,
            "job_id": job_id,
        },
        "deadline_at": deadline_at,
        **(lane or validation.Lane()).fields(),
    }
    created = ctx.jobs.create(
        job_id,
        fields,
        ttl_s=deadline_at - now,
        check_at=received_check_at(ctx, start_at),
        owner=owner,
    )
    if created and not _cancelled_before(ctx, job_id):
        progress.publish(ctx, job_id, Status.SUBMITTING)
    return created


def accept_poll(
    ctx: Ctx,
    job_id: str,
    request: validation.PollRequest,
    notify_url: str | None,
    *,
    owner: str,
    start_at: float | None = None,
    lane: validation.Lane | None = None,
) -> str | None:
    """Start the poll chain of a run sent by name if the job is new; returns its token.
    ``lane``: its tenant and priority (default: none, normal)."""
    now = ctx.clock()
    token = ctx.jobs.start_chain(
        job_id,
        {
            "run_id": request.run_id,
            "model": request.model,
            "cost": request.cost,
            "payment_source": request.payment_source,
            "is_api_request": request.is_api_request,
            "notify_url": notify_url,
            "next_poll_at": max(now, start_at or now),
            **(lane or validation.Lane()).fields(),
        },
        owner=owner,
        deadline_at=max(now, start_at or now) + ctx.settings.poll_timeout_s,
        check_at=received_check_at(ctx, start_at),
    )
    if token is not None and not _cancelled_before(ctx, job_id):
        progress.publish(ctx, job_id, Status.POLLING)
    return token


def _cancelled_before(ctx: Ctx, job_id: str) -> bool:
    """End a record just made as ``CANCELLED`` if a ``tts.cancel`` for its id came before it
    (tasks/steps/cancel.py); True if one had. The cancel's outcome id is the outcome's, so
    the cancel run again (it read the record too) settles nothing more."""
    outcome_id = cancels.remembered(ctx.jobs.redis, job_id)
    if outcome_id is None:
        return False
    log.info("job %s was cancelled before a worker received it", job_id)
    failed(ctx, job_id, errors.Cancelled("cancelled by the caller"), outcome_id=outcome_id)
    return True
