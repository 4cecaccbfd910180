"""The steps of a job as plain functions: submit, poll, download, notify.

Each takes a :class:`tasks.context.Ctx` (everything it touches outside) and a :class:`Delivery`
(which message this is), and returns the job id when the message is done with, or a
:class:`Retry` when this very message must run again later (Celery's ``Task.retry``: same task
id, ``retries + 1``). The Celery tasks in :mod:`tasks.tts` only unpack and translate; the
simulation (tests/sim) calls these functions directly with fakes and a fake broker.

Retry policy by class: :class:`errors.TransientError` is retried with backoff, bounded by
``TTS_MAX_RETRIES`` and the job's deadline; :class:`errors.PermanentError` fails the job at once.
Anything else is a bug: it propagates (Celery logs it and acks the message) and the reconciler
re-sends the job's step once it is overdue; the delivery count parks a step that keeps crashing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from tasks import errors, logctx, metrics, names, schedule, storage, validation, webhooks
from tasks.context import Ctx
from tasks.jobs import Job
from tasks.nanogpt import InlineAudio
from tasks.outcomes import check_at, fail, succeed
from tasks.parsing import AudioLink, Failed, Pending, Ticket
from tasks.states import NotifyState, Status, notify_pending

log = logging.getLogger(__name__)

# A download is retried less than an API call: each attempt may hold a slot for minutes.
DOWNLOAD_MAX_RETRIES = 3
# Seconds a webhook sender holds its claim beyond the wait before its next attempt; a sender
# that died is replaced once this runs out.
NOTIFY_LEASE_SLACK_S = 120.0
# Beyond the HTTP timeouts and the audio wall clock, how long a POST's claim lasts: the time
# between the claim and the POST, and between the answer and recording it.
POST_LEASE_SLACK_S = 5.0


@dataclass(frozen=True)
class Delivery:
    """The message a step runs for: its task name, task id, and Celery's retry count."""

    name: str
    task_id: str
    retries: int = 0

    def step(self, seq: int = 0) -> str:
        """What a delivery counts for (task, poll number, retry): a re-sent copy counts with
        the original."""
        return f"{self.name}:{seq}:{self.retries}"


@dataclass(frozen=True)
class Retry:
    """Run this very message again in ``wait_s`` seconds, because of ``error``."""

    wait_s: float
    error: errors.TransientError


Result = str | Retry


def post_lease_s(ctx: Ctx) -> float:
    """How long one POST (and reading a 200 answer's audio) can take, at most."""
    s = ctx.settings
    return (
        s.http_connect_timeout_s + s.http_read_timeout_s + s.download_timeout_s + POST_LEASE_SLACK_S
    )


def _poisoned(ctx: Ctx, d: Delivery, job_id: str, deliveries: int) -> bool:
    """True (and the job parked as failed) once this step's delivery crashed too often.

    A message that kills its worker process is re-queued by ``reject_on_worker_lost`` (or
    re-sent by the reconciler); without this count it would crash workers forever.
    """
    limit = ctx.settings.max_deliveries
    if deliveries <= limit:
        return False
    log.error("job %s: %s delivered %d times; parked", job_id, d.name, deliveries)
    lost = errors.WorkerLost(f"{d.name} crashed its worker {limit} times")
    if d.name == names.NOTIFY:
        ctx.jobs.finish_notify(job_id, NotifyState.EXPIRED, notify_error=lost.message)
    else:
        fail(ctx, job_id, lost)
    return True


def _retry_or_fail(
    ctx: Ctx,
    d: Delivery,
    exc: errors.TransientError,
    job_id: str,
    *,
    max_retries: int,
    deadline_at: float | None = None,
    lease: tuple[str, int] | None = None,
) -> Result:
    """Run this message again after a backoff, or fail the job once retries or time run out."""
    s = ctx.settings
    if d.retries >= max_retries:
        return fail(ctx, job_id, exc, lease=lease)
    delay_s = schedule.retry_delay_s(
        d.retries,
        base_s=s.retry_base_delay_s,
        max_s=s.retry_max_delay_s,
        retry_after_s=exc.retry_after_s,
    )
    now = ctx.clock()
    if deadline_at is not None and now + delay_s > deadline_at:
        return fail(
            ctx, job_id, errors.DeadlineExceeded(f"deadline reached after: {exc}"), lease=lease
        )
    log.warning("job %s: %s; retry %d in %.1fs", job_id, exc, d.retries + 1, delay_s)
    # not_before: a re-sent step (reconciler) must not ask before the server allowed it either.
    # A poll's retry is its next planned poll: poll lag is measured against next_poll_at.
    retry_at = now + delay_s
    ctx.jobs.update(
        job_id,
        {
            "last_error": exc.message,
            "not_before": retry_at,
            "next_poll_at": retry_at if lease is not None else None,
        },
        check_at=check_at(ctx, delay_s),
    )
    return Retry(delay_s, exc)


# --- accepting a job (also when a worker receives its message: tasks/received.py) ----------


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
    if ctx.jobs.create(jid, {"status": Status.FAILED, "notify_url": url}, ttl_s=0, check_at=None):
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
) -> bool:
    """Make the job's record (``submitting``) if it is new; True if this call made it.

    The request is kept, so the reconciler can re-send a submit whose message was lost, and the
    job gets a deadline like a poll chain, so nothing can wait outside the reconciler's sight.
    """
    s = ctx.settings
    fields = {
        "status": Status.SUBMITTING,
        "model": request.model,
        "notify_url": notify_url,
        "submit_owner": owner,
        "request": {**request.body(), "notify_url": notify_url, "job_id": job_id},
        "deadline_at": ctx.clock() + s.poll_timeout_s,
    }
    return ctx.jobs.create(
        job_id, fields, ttl_s=s.poll_timeout_s, check_at=received_check_at(ctx, start_at)
    )


def accept_poll(
    ctx: Ctx,
    job_id: str,
    request: validation.PollRequest,
    notify_url: str | None,
    *,
    owner: str,
    start_at: float | None = None,
) -> str | None:
    """Start the poll chain of a run sent by name if the job is new; returns its token."""
    now = ctx.clock()
    return ctx.jobs.start_chain(
        job_id,
        {
            "run_id": request.run_id,
            "model": request.model,
            "cost": request.cost,
            "payment_source": request.payment_source,
            "is_api_request": request.is_api_request,
            "notify_url": notify_url,
            "next_poll_at": max(now, start_at or now),
            "chain_owner": owner,
        },
        deadline_at=now + ctx.settings.poll_timeout_s,
        check_at=received_check_at(ctx, start_at),
    )


# --- submit --------------------------------------------------------------------------------


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
        jid = job_identity(d, job_id)
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
        return reject(ctx, d, job_id, exc, notify_url)
    logctx.bind_job(jid)
    accept_submit(ctx, jid, request, url, owner=d.task_id)
    job, deliveries = ctx.jobs.load(jid, delivery=d.step())
    if job is None:
        return jid
    # Our own message (first run, retry or redelivery) may go on; anything else is a duplicate.
    if job.submit_owner != d.task_id or job.status not in (Status.SUBMITTING, Status.POSTING):
        log.info("job %s already exists (%s); duplicate submit ignored", jid, job.status)
        return jid
    if _poisoned(ctx, d, jid, deliveries):
        return jid
    now = ctx.clock()
    if job.status == Status.POSTING:
        return _post_in_doubt(ctx, job, now)
    deadline_at = job.deadline_at or now
    if now >= deadline_at:
        return fail(
            ctx, jid, errors.DeadlineExceeded("the submit did not succeed before its deadline")
        )
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
    try:
        answer = ctx.upstream.submit(request)
    except errors.TransientError as exc:
        return _post_refused(ctx, d, jid, attempt, exc, deadline_at)
    except errors.PermanentError as exc:
        if isinstance(exc, errors.SubmitUnconfirmed):
            log.error("job %s: %s; NanoGPT may have accepted it; not sent again", jid, exc)
        return fail(ctx, jid, exc, guards=posting)
    _accepted(ctx, jid, attempt, answer)
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
    ctx: Ctx, d: Delivery, job_id: str, attempt: str, exc: errors.TransientError, deadline_at: float
) -> Result:
    """NanoGPT provably did not take the POST: give the claim back and retry, within bounds."""
    s = ctx.settings
    posting = {"status": Status.POSTING, "post_attempt": attempt}
    if d.retries >= s.max_retries:
        return fail(ctx, job_id, exc, guards=posting)
    delay_s = schedule.retry_delay_s(
        d.retries,
        base_s=s.retry_base_delay_s,
        max_s=s.retry_max_delay_s,
        retry_after_s=exc.retry_after_s,
    )
    now = ctx.clock()
    if now + delay_s > deadline_at:
        return fail(
            ctx, job_id, errors.DeadlineExceeded(f"deadline reached after: {exc}"), guards=posting
        )
    retry_at = now + delay_s
    if not ctx.jobs.post_refused(
        job_id,
        attempt,
        {"last_error": exc.message, "not_before": retry_at},
        check_at=check_at(ctx, delay_s),
    ):
        return job_id  # the claim ran out meanwhile and the job was settled
    log.warning(
        "job %s: %s; POST not accepted, retry %d in %.1fs", job_id, exc, d.retries + 1, delay_s
    )
    return Retry(delay_s, exc)


def _accepted(
    ctx: Ctx, job_id: str, attempt: str, answer: Ticket | AudioLink | InlineAudio
) -> None:
    """NanoGPT took the POST: hand the job to polling, or to storing the audio it answered."""
    s = ctx.settings
    if isinstance(answer, Ticket):
        moved = _start_polling(ctx, job_id, attempt, answer)
    elif isinstance(answer, AudioLink):
        fields: dict[str, Any] = {
            "audio_url": answer.audio_url,
            "content_type": answer.content_type,
        }
        moved = ctx.jobs.audio_ready(
            job_id, attempt, fields, check_at=check_at(ctx, s.download_timeout_s)
        )
        if moved:
            ctx.dispatch.download(job_id)
    else:
        # Spooled first: a storage outage is then retried from the spool, never by a new POST.
        ctx.jobs.spool(job_id, answer.audio, ttl_s=s.poll_timeout_s)
        fields = {"spooled": True, "content_type": answer.content_type}
        moved = ctx.jobs.audio_ready(
            job_id, attempt, fields, check_at=check_at(ctx, s.download_timeout_s)
        )
        if moved:
            ctx.dispatch.download(job_id)
        else:
            ctx.jobs.drop_spool(job_id)
    if not moved:
        log.error("job %s: NanoGPT accepted the submit after the job had been given up", job_id)


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
            "next_poll_at": now + first_s,
        },
        deadline_at=deadline_at,
        check_at=check_at(ctx, first_s),
        park_at=park_at,
    )
    if token is None:
        return False
    if park_at is None:
        ctx.dispatch.poll(
            ticket.run_id, ticket.model, job_id=job_id, lease=token, seq=0, wait_s=first_s
        )
    return True


# --- poll ----------------------------------------------------------------------------------


def poll(
    ctx: Ctx,
    d: Delivery,
    run_id: object,
    model: object,
    *,
    cost: object = None,
    payment_source: object = None,
    is_api_request: object = True,
    notify_url: object = None,
    job_id: object = None,
    lease: object = None,
    seq: object = 0,
) -> Result:
    """Check a run's status once; re-queue while pending. ``lease`` and ``seq`` are internal
    (the chain's token and this poll's number): a call without them starts a chain, unless the
    job id (``job_id``, else the run id) is already known."""
    try:
        jid = validation.job_id(run_id if job_id is None else job_id)
        request = validation.poll_request(
            run_id, model, cost=cost, payment_source=payment_source, is_api_request=is_api_request
        )
        url = validation.notify_url(notify_url)
        if lease is not None and (not isinstance(lease, str) or not isinstance(seq, int)):
            raise errors.InvalidInput("lease and seq are internal: leave them out")
    except errors.InvalidInput as exc:
        return reject(ctx, d, job_id, exc, notify_url)
    logctx.bind_job(jid)
    if lease is None:
        token = accept_poll(ctx, jid, request, url, owner=d.task_id)
        if token is None:
            known = ctx.jobs.get(jid)
            # This very message may have started the chain before it was redelivered.
            if (
                known is None
                or known.chain_owner != d.task_id
                or known.seq != "0"
                or not known.token
            ):
                log.info("job %s already exists; duplicate poll chain ignored", jid)
                return jid
            token = known.token
        lease, seq = token, 0
    assert isinstance(lease, str)
    assert isinstance(seq, int)

    job, deliveries = ctx.jobs.load(jid, delivery=d.step(seq))
    if job is None or not job.holds(lease, seq):
        log.info("job %s: poll %s is not the current one; exiting", jid, seq)
        return jid
    if _poisoned(ctx, d, jid, deliveries):
        return jid
    held = (lease, seq)
    # The job record is the truth: re-queued polls carry only ids and the lease.
    request = validation.PollRequest(
        run_id=job.run_id or request.run_id,
        model=job.model or request.model,
        cost=job.cost,
        payment_source=job.payment_source,
        is_api_request=job.is_api_request,
    )
    now = ctx.clock()
    metrics.poll_lag(job.next_poll_at, now=now)
    deadline_at = job.deadline_at or now
    if now >= deadline_at:
        return fail(
            ctx,
            jid,
            errors.DeadlineExceeded("the job did not finish before its deadline"),
            lease=held,
        )

    s = ctx.settings
    try:
        result = ctx.upstream.status(request)
    except errors.TransientError as exc:
        metrics.poll("retry")
        return _retry_or_fail(
            ctx, d, exc, jid, max_retries=s.max_retries, deadline_at=deadline_at, lease=held
        )
    except errors.PermanentError as exc:
        metrics.poll("failed")
        return fail(ctx, jid, exc, lease=held, polls=job.polls + 1)

    if isinstance(result, Failed):
        metrics.poll("failed")
        return fail(ctx, jid, result.error, lease=held, polls=job.polls + 1)
    if isinstance(result, AudioLink):
        metrics.poll("completed")
        fields = {
            "last_status": "completed",
            "audio_url": result.audio_url,
            "content_type": result.content_type,
        }
        if ctx.jobs.end_polling(
            jid, lease, seq, fields, check_at=check_at(ctx, s.download_timeout_s)
        ):
            ctx.dispatch.download(jid)
        return jid
    metrics.poll("pending")
    return _requeue(ctx, job, result, held, deadline_at)


def _requeue(
    ctx: Ctx, job: Job, pending: Pending, held: tuple[str, int], deadline_at: float
) -> str:
    s = ctx.settings
    now = ctx.clock()
    position = pending.queue_position
    before = schedule.Seen(job.queue_first_position, job.queue_first_seen_at, job.head_since)
    progress, seen = before.after(position, now)
    delay_s = schedule.next_poll_delay_s(
        progress,
        interval_s=s.poll_interval_s,
        max_interval_s=s.poll_max_interval_s,
        now=now,
        deadline_at=deadline_at,
    )
    if delay_s is None:
        return fail(
            ctx, job.job_id, errors.DeadlineExceeded("still pending at the deadline"), lease=held
        )
    if pending.status != "pending":
        log.info("job %s: status %r treated as pending", job.job_id, pending.status)
    lease, seq = held
    # Parked in Redis, the next poll is recorded in the same atomic step as the lease moves.
    park_at = now + delay_s if s.polls_wait_in_redis else None
    if not ctx.jobs.advance(
        job.job_id,
        lease,
        seq,
        {
            "last_status": pending.status,
            # "" rather than None, which would leave the previous position in place.
            "queue_position": "" if position is None else position,
            "queue_first_position": seen.first_position,
            "queue_first_seen_at": seen.first_seen_at,
            "head_since": seen.head_since,
            "next_poll_at": now + delay_s,
        },
        check_at=check_at(ctx, delay_s),
        park_at=park_at,
    ):
        return job.job_id
    if park_at is None:
        assert job.run_id
        assert job.model
        ctx.dispatch.poll(
            job.run_id, job.model, job_id=job.job_id, lease=lease, seq=seq + 1, wait_s=delay_s
        )
    return job.job_id


# --- download ------------------------------------------------------------------------------


def download(ctx: Ctx, d: Delivery, job_id: object) -> Result:
    """Store the job's audio (fetched from its URL, or from the spool), record the outcome."""
    if not isinstance(job_id, str):
        log.error("download with a job id that is not a string dropped")
        return str(job_id)
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
    if _poisoned(ctx, d, job_id, deliveries):
        return job_id
    s = ctx.settings
    downloading = {"status": Status.DOWNLOADING}
    started_at = ctx.clock()
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
        return _retry_or_fail(ctx, d, exc, job_id, max_retries=limit)
    except errors.PermanentError as exc:
        return fail(ctx, job_id, exc, guards=downloading)
    metrics.downloaded(stored.bytes, max(0.0, ctx.clock() - started_at))
    return succeed(ctx, job_id, stored)


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


# --- notify --------------------------------------------------------------------------------


def notify(ctx: Ctx, d: Delivery, job_id: object) -> Result:
    """POST the job's outcome to its ``notify_url``, signed; retried until accepted or expired."""
    if not isinstance(job_id, str):
        log.error("notify with a job id that is not a string dropped")
        return str(job_id)
    logctx.bind_job(job_id)
    store = ctx.jobs
    job, deliveries = store.load(job_id, delivery=d.step())
    if job is None or not notify_pending(job):
        return job_id
    if not job.notify_url:
        store.finish_notify(job_id, NotifyState.NONE)
        return job_id
    if _poisoned(ctx, d, job_id, deliveries):
        return job_id
    s = ctx.settings
    delay_s = schedule.retry_delay_s(
        d.retries, base_s=s.webhook_retry_delay_s, max_s=s.webhook_max_retry_delay_s
    )
    if not store.claim_notify(job_id, d.task_id, lease_s=delay_s + NOTIFY_LEASE_SLACK_S):
        return job_id
    assert job.outcome is not None  # notify_pending says so
    body = webhooks.outcome_body(job_id, job.run_id, job.model, job.outcome)
    if "audio" in body:
        # A presigned URL expires: each attempt carries one signed now, not at download time.
        body["audio"] = ctx.audio_store.fresh(body["audio"])
    attempts = job.notify_attempts + 1
    try:
        ctx.webhook(job.notify_url, body, msg_id=webhooks.message_id(job_id))
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


#: The step function for each task name (the simulation's fake Celery looks them up here).
STEPS: dict[str, Any] = {
    names.SUBMIT_TTS: submit,
    names.POLL_TTS: poll,
    names.DOWNLOAD_AUDIO: download,
    names.NOTIFY: notify,
}
