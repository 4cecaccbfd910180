"""The submit step: one paid ``POST /api/tts``, claimed before it is sent and sent again only
when NanoGPT provably did not take it (tasks/record/states.py draws the states)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import redis

from tasks import errors, logctx, metrics
from tasks.audio import storage
from tasks.config.celery_config import POST_LEASE_SLACK_S
from tasks.nanogpt import validation
from tasks.nanogpt.client import InlineAudio
from tasks.nanogpt.parsing import AudioLink, Ticket
from tasks.pacing import aim, poll_value, schedule
from tasks.record import tenants
from tasks.record.contract import SUBMIT_GRANT, F
from tasks.record.jobs import SPOOL_MAX_BYTES, Job
from tasks.record.states import Status
from tasks.steps import accept, progress
from tasks.steps.base import Delivery, Result, Retry, past_deadline, poisoned, post_lease_s
from tasks.steps.context import Ctx
from tasks.steps.outcomes import check_at, discard_unrecorded, fail
from tasks.steps.reuse import serve as served_by_reuse

log = logging.getLogger(__name__)


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
    tenant: object = None,
    priority: object = "normal",
    reuse: object = True,
    accepted: object = None,
) -> Result:
    """Submit one text once; the job goes on by polling, downloading or storing. ``tenant``
    and ``priority`` name the lane its NanoGPT calls wait in (tasks/pacing/fairness.py).
    ``reuse``: whether an identical request's audio may answer it (TTS_REUSE_TTL;
    :mod:`tasks.steps.reuse`). ``accepted`` is internal: NanoGPT's answer to this message's
    POST, carried by its retry when the job store could not take it
    (:class:`AnswerUnrecorded`)."""
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
            reuse=reuse,
        )
        url = validation.notify_url(notify_url)
        lane = validation.lane(tenant, priority)
    except errors.InvalidInput as exc:
        return accept.reject(ctx, d, job_id, exc, notify_url)
    logctx.bind_job(jid)
    accept.accept_submit(ctx, jid, request, url, owner=d.task_id, lane=lane)
    job, deliveries = ctx.jobs.load(jid, delivery=d.step())
    if job is None:
        return jid
    # Our own message (first run, retry or redelivery) may go on; anything else is a duplicate.
    if job.owner != d.task_id or job.status not in (Status.SUBMITTING, Status.POSTING):
        log.info("job %s already exists (%s); duplicate submit ignored", jid, job.status)
        return jid
    if poisoned(ctx, d, jid, deliveries):
        return jid
    now = ctx.clock()
    lost_claim = None
    if job.status == Status.SUBMITTING and _answer_outlived_its_claim(
        ctx, d, job, accepted, model=request.model, now=now
    ):
        return jid
    if job.status == Status.POSTING:
        carried = _carried_answer(accepted, job.token)
        if carried is not None:
            lease_until = job.lease_until or now + post_lease_s(ctx)
            _record_answer(
                ctx,
                jid,
                job.token or "",
                carried,
                model=request.model,
                lease_until=lease_until,
            )
            return jid
        lost_claim = _lost_claim(accepted, job.token)
        if lost_claim is None:
            if not _unsent_claim_returned(ctx, job, now):
                return _post_in_doubt(ctx, job, now)
            job = dataclasses.replace(job, status=Status.SUBMITTING)
    # Before the budget: a job another's audio answers, or that follows one in flight, makes
    # no NanoGPT call and takes no token.
    if lost_claim is None and accepted is None:
        going_on = served_by_reuse(ctx, d, job, request, deliveries)
        if going_on is None:
            return jid
        job = going_on
    deadline_at = job.deadline_at or now
    if now >= deadline_at:
        return fail(
            ctx, jid, errors.DeadlineExceeded("the submit did not succeed before its deadline")
        )
    # A tenant at one of its caps: refused before any NanoGPT call (tasks/record/tenants.py).
    if lost_claim is None and job.posts == 0 and (over := _over_cap(ctx, job, now, deadline_at)):
        return fail(ctx, jid, over)
    # A lost claim's execution spent the budget's token already, and sent nothing with it.
    if lost_claim is None and ctx.budget.spend(jid, SUBMIT_GRANT) > 0:
        # No budget now: the POST is not sent, and this is not a retry. The job waits for a
        # token in the wait set (submits oldest first; tasks/pacing/budget.py), holding no worker
        # slot; it ends at its deadline if the budget never comes.
        metrics.submit_deferred()
        metrics.lane_deferred(job.priority, job.tenant)
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
    claim_check_at = lease_until + ctx.settings.recovery_grace_s
    try:
        if lost_claim is not None:
            claimed = ctx.jobs.take_over_post(
                jid, lost_claim, attempt, lease_until=lease_until, check_at=claim_check_at
            )
        else:
            claimed = ctx.jobs.begin_post(
                jid,
                d.task_id,
                attempt,
                posts=job.posts + 1,
                lease_until=lease_until,
                check_at=claim_check_at,
            )
    except Exception as exc:
        # The claim may have been written without its reply reaching us (a timeout, a
        # connection cut after the script ran). Nothing was sent under it: the retry carries
        # it and takes it over at once (take_over_post).
        raise AnswerUnrecorded({"attempt": attempt, "kind": "claim"}) from exc
    try:
        # Marked just before it leaves: a claim without the mark provably sent nothing.
        sending = claimed and ctx.jobs.post_sent(jid, attempt)
    except Exception as exc:
        # The same for the mark, which is also taken back: see _take_back_mark.
        _take_back_mark(ctx, jid, attempt)
        raise AnswerUnrecorded({"attempt": attempt, "kind": "claim"}) from exc
    if not sending:
        return jid  # refused, or the claim ran out before the POST left and was taken back
    progress.publish(ctx, jid, Status.POSTING)
    posting = _posting(attempt)
    metrics.upstream_call("submit")
    metrics.lane_call(job.priority, job.tenant)
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
    _record_answer(ctx, jid, attempt, answer, model=request.model, lease_until=lease_until)
    return jid


class AnswerUnrecorded(Exception):
    """A job-store write whose outcome this execution cannot know, with what its retry needs
    (``answer``, carried as the message's ``accepted`` argument): NanoGPT's answer that the
    store could not take (so the paid run is not lost as ``SUBMIT_UNCONFIRMED``), or the POST
    claim whose reply was lost before anything was sent (so the retry may take it over instead
    of ending the job ``SUBMIT_UNCONFIRMED`` with no POST). The cause is the ``__cause__``
    (tasks/adapters/acks.py reads it)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__("NanoGPT's answer to the submit could not be recorded")
        self.answer = answer


def _take_back_mark(ctx: Ctx, job_id: str, attempt: str) -> None:
    """The POST's mark may be written though its reply was lost, and nothing was sent: take it
    back, so the record says so. The retry carries the claim too, but it can come late: held by
    a worker that died before its countdown ran out, it is back only after the visibility
    timeout, while the reconciler's re-sent submit, finding the mark on a claim run out, would
    end the job ``SUBMIT_UNCONFIRMED`` with no POST sent. Best effort: if the job store fails
    this too, the retry is again the one that knows."""
    try:
        ctx.jobs.post_not_sent(job_id, attempt)
    except redis.RedisError as exc:
        log.warning("job %s: the POST's mark, not sent, could not be taken back: %s", job_id, exc)


def _over_cap(ctx: Ctx, job: Job, now: float, deadline_at: float) -> errors.TenantLimit | None:
    """The error a submit ends with when its tenant is at a cap; None when it may go on (and
    then counts in flight until it ends)."""
    s = ctx.settings
    if not job.tenant or not (s.tenant_max_in_flight or s.tenant_max_spend_per_day):
        return None
    answer = tenants.admit(
        ctx.jobs.redis,
        job.tenant,
        job.job_id,
        now=now,
        deadline_at=deadline_at,
        max_in_flight=s.tenant_max_in_flight,
        max_spend=s.tenant_max_spend_per_day,
    )
    if answer == tenants.IN_FLIGHT_FULL:
        return errors.TenantLimit(
            f"tenant {job.tenant} has {s.tenant_max_in_flight} jobs in flight"
            " (TTS_TENANT_MAX_IN_FLIGHT)"
        )
    if answer == tenants.SPEND_REACHED:
        return errors.TenantLimit(
            f"tenant {job.tenant} has spent {s.tenant_max_spend_per_day:g} today"
            " (TTS_TENANT_MAX_SPEND_PER_DAY)"
        )
    return None


def _count_spend(ctx: Ctx, job_id: str, cost: float | None) -> None:
    """Add one job's cost to its tenant's spend today, when that is capped (once per job: the
    caller's transition returned True)."""
    if not ctx.settings.tenant_max_spend_per_day or not cost or cost < 0:
        return
    tenant = ctx.jobs.redis.hget(ctx.jobs.key(job_id), "tenant")
    if tenant:
        tenants.spent(ctx.jobs.redis, str(tenant), cost, now=ctx.clock())


def _record_answer(
    ctx: Ctx,
    job_id: str,
    attempt: str,
    answer: Ticket | AudioLink | InlineAudio,
    *,
    model: str,
    lease_until: float,
) -> None:
    """:func:`_accepted`; if that raises, the answer leaves with the error, to come back with
    the retry. Audio bytes do not fit in a message: an inline answer that could not be
    recorded is lost, and the job ends ``SUBMIT_UNCONFIRMED`` when its claim runs out."""
    try:
        _accepted(ctx, job_id, attempt, answer, model=model, lease_until=lease_until)
    except Exception as exc:
        if isinstance(answer, InlineAudio):
            raise
        kind = "ticket" if isinstance(answer, Ticket) else "audio_link"
        carried = {"attempt": attempt, "kind": kind, **dataclasses.asdict(answer)}
        raise AnswerUnrecorded(carried) from exc


def _posting(attempt: str | None) -> dict[str, str | None]:
    """The guard of a settle from ``posting``: only while ``attempt`` holds the POST claim."""
    return {F.STATUS: Status.POSTING, F.TOKEN: attempt}


def _answer_outlived_its_claim(
    ctx: Ctx, d: Delivery, job: Job, accepted: object, *, model: str, now: float
) -> bool:
    """A retry carries NanoGPT's answer, yet finds the job ``submitting``: the claim the POST
    was sent under went with the job store's last second (a restart on an AOF fsynced every
    second). The answer proves NanoGPT took that POST: claim again under the same attempt (no
    token spent, nothing sent) and record it, rather than POST, and bill, a second time. True
    once recorded (or handed to the retry by :func:`_record_answer`)."""
    attempt = accepted.get("attempt") if isinstance(accepted, dict) else None
    if not isinstance(attempt, str):
        return False
    answer = _carried_answer(accepted, attempt)
    if answer is None:
        return False
    log.warning(
        "job %s: its POST's claim was lost by the job store; recording its answer", job.job_id
    )
    lease_until = now + post_lease_s(ctx)
    claimed = ctx.jobs.begin_post(
        job.job_id,
        d.task_id,
        attempt,
        posts=job.posts + 1,
        lease_until=lease_until,
        check_at=lease_until + ctx.settings.recovery_grace_s,
    )
    if not claimed:
        return False
    _record_answer(ctx, job.job_id, attempt, answer, model=model, lease_until=lease_until)
    return True


def _lost_claim(accepted: object, attempt: str | None) -> str | None:
    """The job's current POST claim, if the retry carries it as one whose reply was lost (no
    POST went out under it); None otherwise."""
    if not isinstance(accepted, dict) or not attempt or accepted.get("attempt") != attempt:
        return None
    return attempt if accepted.get("kind") == "claim" else None


def _carried_answer(accepted: object, attempt: str | None) -> Ticket | AudioLink | None:
    """The answer a retry carries for the job's current POST claim; None for none, for
    another claim's, or for anything malformed (a crafted message)."""
    if not isinstance(accepted, dict) or not attempt or accepted.get("attempt") != attempt:
        return None
    fields = {k: v for k, v in accepted.items() if k not in ("attempt", "kind")}
    try:
        if accepted.get("kind") == "ticket" and isinstance(fields.get("run_id"), str):
            return Ticket(**fields)
        if accepted.get("kind") == "audio_link" and isinstance(fields.get("audio_url"), str):
            return AudioLink(**fields)
    except TypeError:
        pass
    return None


def _unsent_claim_returned(ctx: Ctx, job: Job, now: float) -> bool:
    """A claim that ran out before its POST left (its worker died, or lost Redis' reply,
    between the claim and the send) sent nothing: give it back so this delivery may send it,
    rather than end the job as "may have been billed". True if this call gave it back."""
    if not job.post_unsent() or (job.lease_until or 0.0) > now:
        return False
    log.warning("job %s: the POST's claim ran out before it was sent; sending it", job.job_id)
    return ctx.jobs.post_refused(
        job.job_id,
        job.token or "",
        {"last_error": "the claim on the POST ran out before the POST was sent"},
        check_at=check_at(ctx, 0),
    )


def _post_in_doubt(ctx: Ctx, job: Job, now: float) -> str:
    """Another execution of this message claimed the POST: leave it, or end the job once its
    claim ran out with no answer recorded (its worker died, or hung, while sending)."""
    if (job.lease_until or 0.0) > now:
        log.info("job %s: this submit is being sent by another delivery; leaving it", job.job_id)
        return job.job_id
    exc = errors.SubmitUnconfirmed(
        "the worker sending the submit stopped before its answer was recorded; NanoGPT may "
        "have accepted (and billed) it, so it was not sent again"
    )
    log.error("job %s: %s", job.job_id, exc.message)
    return fail(ctx, job.job_id, exc, guards=_posting(job.token))


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
    posting = _posting(attempt)
    done = max(d.retries, job.tries)
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
        {"last_error": exc.message, "not_before": retry_at, F.TRIES: done + 1},
        check_at=check_at(ctx, delay_s),
    ):
        return job_id  # the claim ran out meanwhile and the job was settled
    progress.publish(ctx, job_id, Status.SUBMITTING)
    log.warning("job %s: %s; POST not accepted, retry %d in %.1fs", job_id, exc, done + 1, delay_s)
    return Retry(delay_s, exc)


def _accepted(
    ctx: Ctx,
    job_id: str,
    attempt: str,
    answer: Ticket | AudioLink | InlineAudio,
    *,
    model: str,
    lease_until: float,
) -> None:
    """NanoGPT took the POST: hand the job to polling, or to storing the audio it answered.
    What it said the POST cost is recorded with the answer, and counted once per job."""
    s = ctx.settings
    if isinstance(answer, Ticket):
        moved = _start_polling(ctx, job_id, attempt, answer)
        if moved:
            metrics.spent(answer.model, answer.payment_source, answer.cost)
            _count_spend(ctx, job_id, answer.cost)
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
            _count_spend(ctx, job_id, answer.cost)
            ctx.dispatch.download(job_id)
    elif len(answer.audio) <= SPOOL_MAX_BYTES:
        # Small: spooled first, so a storage outage is retried from the spool, never by a new
        # POST, and a worker killed now loses nothing.
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
    else:
        moved = _store_inline(ctx, job_id, attempt, answer, lease_until=lease_until)
    if moved and not isinstance(answer, Ticket):
        progress.publish(ctx, job_id, Status.DOWNLOADING)
    if not moved:
        # Cancelled (or given up) while the POST was in flight: NanoGPT has billed it anyway.
        run = f" as run {answer.run_id}" if isinstance(answer, Ticket) else ""
        log.error(
            "job %s: NanoGPT accepted (and billed) the submit%s after the job had ended; "
            "its answer is not used",
            job_id,
            run,
        )


def _store_inline(
    ctx: Ctx, job_id: str, attempt: str, answer: InlineAudio, *, lease_until: float
) -> bool:
    """Larger audio goes straight to its final place in the audio store (named by the job id,
    so storing it again rewrites the same bytes), within the POST's claim; the download step
    then only records it. The bytes exist nowhere else: if the store refuses them, the job
    fails STORAGE_FAILED (NanoGPT has billed it) rather than parking megabytes in Redis.
    Returns whether the job moved on (False: it had ended meanwhile, or failed here)."""
    s = ctx.settings
    posting = _posting(attempt)
    # Leave the claim's own slack for recording the answer once the audio is stored.
    left_s = min(s.download_timeout_s, lease_until - ctx.clock() - POST_LEASE_SLACK_S)
    try:
        stored = storage.store_bytes(
            answer.audio,
            store=ctx.audio_store,
            job_id=job_id,
            content_type=answer.content_type,
            max_bytes=s.max_audio_bytes,
            timeout_s=max(0.0, left_s),
        )
    except errors.TTSError as exc:
        reason: errors.TTSError = exc
        if isinstance(exc, errors.TransientError):
            reason = errors.StorageFailed(
                f"the {len(answer.audio)} bytes of audio NanoGPT answered with could not be "
                f"stored: {exc.message}"
            )
        fail(ctx, job_id, reason, guards=posting)
        return False
    fields = {
        "stored_audio": stored.as_dict(),
        "content_type": answer.content_type,
        "request_id": answer.request_id,
    }
    if not ctx.jobs.audio_ready(
        job_id, attempt, fields, check_at=check_at(ctx, s.download_timeout_s)
    ):
        discard_unrecorded(ctx, job_id, stored)  # the job ended meanwhile: nobody's file
        return False
    ctx.dispatch.download(job_id)
    return True


def _start_polling(ctx: Ctx, job_id: str, attempt: str, ticket: Ticket) -> bool:
    s = ctx.settings
    now = ctx.clock()
    deadline_at = now + s.poll_timeout_s
    # NanoGPT has only just accepted the job: a status check now would answer "pending", so the
    # first one waits like every later one (an interval, jittered so a burst of submits spreads).
    # Once the model's generation times are learned, it waits for the earliest of them to end
    # (the job has not started before now), or, behind what is left of the line the fleet last
    # saw, as a queued job's poll would (tasks/pacing/aim.py).
    fleet = ctx.learning.fleet(ticket.model)
    ahead = fleet.places_ahead(now)
    first_s = schedule.next_poll_delay_s(
        schedule.Progress(None),
        interval_s=s.poll_interval_s,
        max_interval_s=s.poll_max_interval_s,
        now=now,
        deadline_at=deadline_at,
        aimed_s=aim.queued_s(
            ahead,
            fleet.s_per_place() or 0.0,
            poll_value.Generations(fleet.generation_s),
            s.poll_interval_s,
        ),
    )
    assert first_s is not None  # the deadline is a whole TTS_POLL_TIMEOUT away
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
        # Parked, the first poll is watched at its deadline (tasks/sweeps/granting.py).
        check_at=deadline_at,
        park_at=now + first_s,
    )
    if token is None:
        return False
    progress.publish(ctx, job_id, Status.POLLING)
    return True
