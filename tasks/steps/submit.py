"""The submit step: one paid ``POST /api/tts``, claimed before it is sent and sent again only
when NanoGPT provably did not take it (tasks/states.py draws the states)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from tasks import errors, logctx, metrics, schedule, validation
from tasks.context import Ctx
from tasks.jobs import Job
from tasks.nanogpt import InlineAudio
from tasks.outcomes import check_at, fail
from tasks.parsing import AudioLink, Ticket
from tasks.states import Status
from tasks.steps import accept
from tasks.steps.base import Delivery, Result, Retry, past_deadline, poisoned, post_lease_s

log = logging.getLogger(__name__)

#: The grant the releaser writes for a waiting submit (tasks/budget.py).
BUDGET_GRANT = "submit"


def submit(
    ctx: Ctx,
    d: Delivery,
    text: object,
    model: object,
    *,
    voice: object = None,
    speed: object = None,
    response_format: object = None,
    instructions: object = None,
    stability: object = None,
    similarity_boost: object = None,
    style: object = None,
    notify_url: object = None,
    job_id: object = None,
) -> Result:
    """Submit one text once; the job goes on by polling, downloading or storing."""
    try:
        jid = accept.job_identity(d, job_id)
        request = validation.submit_request(
            text,
            model,
            voice=voice,
            speed=speed,
            response_format=response_format,
            instructions=instructions,
            stability=stability,
            similarity_boost=similarity_boost,
            style=style,
        )
        url = validation.notify_url(notify_url)
    except errors.InvalidInput as exc:
        return accept.reject(ctx, d, job_id, exc, notify_url)
    logctx.bind_job(jid)
    accept.accept_submit(ctx, jid, request, url, owner=d.task_id)
    job, deliveries = ctx.jobs.load(jid, delivery=d.step())
    if job is None:
        return jid
    # Our own message (first run, retry or redelivery) may go on; anything else is a duplicate.
    if job.submit_owner != d.task_id or job.status not in (Status.SUBMITTING, Status.POSTING):
        log.info("job %s already exists (%s); duplicate submit ignored", jid, job.status)
        return jid
    if poisoned(ctx, d, jid, deliveries):
        return jid
    now = ctx.clock()
    if job.status == Status.POSTING:
        return _post_in_doubt(ctx, job, now)
    deadline_at = job.deadline_at or now
    if now >= deadline_at:
        return fail(
            ctx, jid, errors.DeadlineExceeded("the submit did not succeed before its deadline")
        )
    if ctx.budget.spend(jid, BUDGET_GRANT) > 0:
        # No budget now: the POST is not sent, and this is not a retry. The job waits for a
        # token in the submit wait set (oldest first; tasks/budget.py), holding no worker slot;
        # it ends at its deadline if the budget never comes.
        metrics.submit_deferred()
        ctx.jobs.defer_submit(
            jid,
            d.task_id,
            deliveries=deliveries,
            check_at=deadline_at,
            queued_at=job.created_at or now,
        )
        return jid
    attempt = uuid.uuid4().hex
    lease_until = now + post_lease_s(ctx)
    if not ctx.jobs.begin_post(
        jid,
        d.task_id,
        attempt,
        posts=job.posts + 1,
        lease_until=lease_until,
        check_at=lease_until + ctx.settings.recovery_grace_s,
    ):
        return jid
    posting = {"status": Status.POSTING, "post_attempt": attempt}
    metrics.upstream_call("submit")
    try:
        answer = ctx.upstream.submit(request)
    except errors.TransientError as exc:
        if isinstance(exc, errors.RateLimited):
            ctx.budget.refused()
        return _post_refused(ctx, d, job, attempt, exc, deadline_at)
    except errors.PermanentError as exc:
        if isinstance(exc, errors.SubmitUnconfirmed):
            log.error("job %s: %s; NanoGPT may have accepted it; not sent again", jid, exc)
        return fail(ctx, jid, exc, guards=posting)
    _accepted(ctx, jid, attempt, answer, model=request.model)
    return jid


def _post_in_doubt(ctx: Ctx, job: Job, now: float) -> str:
    """Another execution of this message claimed the POST: leave it, or end the job once its
    claim ran out with no answer recorded (its worker died, or hung, while sending)."""
    if (job.post_lease_until or 0.0) > now:
        log.info("job %s: this submit is being sent by another delivery; leaving it", job.job_id)
        return job.job_id
    exc = errors.SubmitUnconfirmed(
        "the worker sending the submit stopped before its answer was recorded; NanoGPT may "
        "have accepted (and billed) it, so it was not sent again"
    )
    log.error("job %s: %s", job.job_id, exc.message)
    guards = {"status": Status.POSTING, "post_attempt": job.post_attempt or ""}
    return fail(ctx, job.job_id, exc, guards=guards)


def _post_refused(
    ctx: Ctx,
    d: Delivery,
    job: Job,
    attempt: str,
    exc: errors.TransientError,
    deadline_at: float,
) -> Result:
    """NanoGPT provably did not take the POST: give the claim back and retry, within bounds.
    The retries are counted in the record too: one that waited for budget comes back as a
    fresh message."""
    s = ctx.settings
    job_id = job.job_id
    posting = {"status": Status.POSTING, "post_attempt": attempt}
    done = max(d.retries, job.post_retries)
    if done >= s.max_retries:
        return fail(ctx, job_id, exc, guards=posting)
    delay_s = schedule.retry_delay_s(
        done,
        base_s=s.retry_base_delay_s,
        max_s=s.retry_max_delay_s,
        retry_after_s=exc.retry_after_s,
    )
    now = ctx.clock()
    if now + delay_s > deadline_at:
        return fail(ctx, job_id, past_deadline(exc), guards=posting)
    retry_at = now + delay_s
    if not ctx.jobs.post_refused(
        job_id,
        attempt,
        {"last_error": exc.message, "not_before": retry_at, "post_retries": done + 1},
        check_at=check_at(ctx, delay_s),
    ):
        return job_id  # the claim ran out meanwhile and the job was settled
    log.warning("job %s: %s; POST not accepted, retry %d in %.1fs", job_id, exc, done + 1, delay_s)
    return Retry(delay_s, exc)


def _accepted(
    ctx: Ctx, job_id: str, attempt: str, answer: Ticket | AudioLink | InlineAudio, *, model: str
) -> None:
    """NanoGPT took the POST: hand the job to polling, or to storing the audio it answered.
    What it said the POST cost is recorded with the answer, and counted once per job."""
    s = ctx.settings
    if isinstance(answer, Ticket):
        moved = _start_polling(ctx, job_id, attempt, answer)
        if moved:
            metrics.spent(answer.model, answer.payment_source, answer.cost)
    elif isinstance(answer, AudioLink):
        fields: dict[str, Any] = {
            "audio_url": answer.audio_url,
            "content_type": answer.content_type,
            "cost": answer.cost,
            "currency": answer.currency,
            "request_id": answer.request_id,
        }
        moved = ctx.jobs.audio_ready(
            job_id, attempt, fields, check_at=check_at(ctx, s.download_timeout_s)
        )
        if moved:
            metrics.spent(model, answer.currency, answer.cost)
            ctx.dispatch.download(job_id)
    else:
        # Spooled first: a storage outage is then retried from the spool, never by a new POST.
        ctx.jobs.spool(job_id, answer.audio, ttl_s=s.poll_timeout_s)
        fields = {
            "spooled": True,
            "content_type": answer.content_type,
            "request_id": answer.request_id,
        }
        moved = ctx.jobs.audio_ready(
            job_id, attempt, fields, check_at=check_at(ctx, s.download_timeout_s)
        )
        if moved:
            ctx.dispatch.download(job_id)
        else:
            ctx.jobs.drop_spool(job_id)
    if not moved:
        # Cancelled (or given up) while the POST was in flight: NanoGPT has billed it anyway.
        run = f" as run {answer.run_id}" if isinstance(answer, Ticket) else ""
        log.error(
            "job %s: NanoGPT accepted (and billed) the submit%s after the job had ended; "
            "its answer is not used",
            job_id,
            run,
        )


def _start_polling(ctx: Ctx, job_id: str, attempt: str, ticket: Ticket) -> bool:
    s = ctx.settings
    now = ctx.clock()
    deadline_at = now + s.poll_timeout_s
    # NanoGPT has only just accepted the job: a status check now would answer "pending", so the
    # first one waits like every later one (an interval, jittered so a burst of submits spreads).
    first_s = schedule.next_poll_delay_s(
        schedule.Progress(None),
        interval_s=s.poll_interval_s,
        max_interval_s=s.poll_max_interval_s,
        now=now,
        deadline_at=deadline_at,
    )
    assert first_s is not None  # the deadline is a whole TTS_POLL_TIMEOUT away
    park_at = now + first_s if s.polls_wait_in_redis else None
    token = ctx.jobs.post_accepted(
        job_id,
        attempt,
        {
            "run_id": ticket.run_id,
            "model": ticket.model,
            "cost": ticket.cost,
            "payment_source": ticket.payment_source,
            "request_id": ticket.request_id,
            "next_poll_at": now + first_s,
            "seen_at": now,
        },
        deadline_at=deadline_at,
        # Parked, the first poll is watched at its deadline (tasks/parking.py).
        check_at=deadline_at if park_at is not None else check_at(ctx, first_s),
        park_at=park_at,
    )
    if token is None:
        return False
    if park_at is None:
        ctx.dispatch.poll(
            ticket.run_id, ticket.model, job_id=job_id, lease=token, seq=0, wait_s=first_s
        )
    return True
