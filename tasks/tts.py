"""The Celery tasks. Each unpacks its arguments, calls plain code, and ends in one of:
done, re-queue (a countdown, never a sleep), retry (transient fault), or fail (permanent).

Retry policy by class: :class:`errors.TransientError` is retried with backoff, bounded by
``TTS_MAX_RETRIES`` and the job's deadline; :class:`errors.PermanentError` fails the job at once.
Anything else is a bug and is left to Celery (logged, acked, visible in Flower); the reconciler
then re-sends the job's step once it is overdue.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Task, shared_task

from tasks import (
    dispatch,
    errors,
    logctx,
    metrics,
    names,
    reconcile,
    schedule,
    storage,
    validation,
    webhooks,
)
from tasks import runtime as rt
from tasks.jobs import Job
from tasks.nanogpt import InlineAudio
from tasks.outcomes import check_at, fail, succeed
from tasks.parsing import AudioLink, Failed, Pending, Ticket

log = logging.getLogger(__name__)

# A download is retried less than an API call: each attempt may hold a slot for minutes.
DOWNLOAD_MAX_RETRIES = 3
# Seconds a webhook sender holds its claim beyond the wait before its next attempt; a sender
# that died is replaced once this runs out.
NOTIFY_LEASE_SLACK_S = 120.0
# Hard ceilings on one execution (Celery kills the process past these). Generous: HTTP calls
# have their own timeouts; these only catch the unforeseen.
API_TIME_LIMIT_S = 120
NOTIFY_TIME_LIMIT_S = 120
# A download's own limits end it by about 185 s with the defaults (5 s connect, 30 s to the
# headers, the 120 s wall clock, one last 30 s read); this only catches what they miss.
DOWNLOAD_TIME_LIMIT_S = 200

COMMON: dict[str, Any] = {
    "bind": True,
    # Redelivered if the worker dies mid-task; the job record makes a repeat harmless.
    "acks_late": True,
    "reject_on_worker_lost": True,
    # Retries are bounded by our own count and deadline, not Celery's default of 3.
    "max_retries": None,
}


def _step(task: Task, seq: int) -> str:  # type: ignore[type-arg]
    """The step a delivery counts for (task, poll number, retry): a re-sent copy counts with
    the original."""
    return f"{task.name}:{seq}:{task.request.retries}"


def _load(task: Task, job_id: str, seq: int = 0) -> tuple[Job | None, int]:  # type: ignore[type-arg]
    """The job and this delivery's count, in one Redis round trip."""
    step = _step(task, seq)
    return rt.jobs().load(job_id, delivery=step)


def _poisoned(task: Task, job_id: str, deliveries: int | None = None) -> bool:  # type: ignore[type-arg]
    """True (and the job parked as failed) once this step's delivery crashed too often.

    A message that kills its worker process is re-queued by ``reject_on_worker_lost`` (or
    re-sent by the reconciler); without this count it would crash workers forever.
    ``deliveries``: the count :func:`_load` took; None counts this delivery now.
    """
    if deliveries is None:
        step = _step(task, 0)
        deliveries = rt.jobs().count_delivery(job_id, step)
    limit = rt.settings().max_deliveries
    if deliveries <= limit:
        return False
    log.error("job %s: %s delivered %d times; parked", job_id, task.name, deliveries)
    lost = errors.WorkerLost(f"{task.name} crashed its worker {limit} times")
    if task.name == names.NOTIFY:
        rt.jobs().finish_notify(job_id, "expired", notify_error=lost.message)
    else:
        fail(job_id, lost)
    return True


def _retry_or_fail(
    task: Task,  # type: ignore[type-arg]
    exc: errors.TransientError,
    job_id: str,
    *,
    max_retries: int,
    deadline_at: float | None = None,
    lease: tuple[str, int] | None = None,
) -> str:
    """Re-send this task after a backoff, or fail the job once retries or time run out."""
    s = rt.settings()
    retries = task.request.retries
    if retries >= max_retries:
        return fail(job_id, exc, lease=lease)
    delay_s = schedule.retry_delay_s(
        retries,
        base_s=s.retry_base_delay_s,
        max_s=s.retry_max_delay_s,
        retry_after_s=exc.retry_after_s,
    )
    if deadline_at is not None and time.time() + delay_s > deadline_at:
        return fail(job_id, errors.DeadlineExceeded(f"deadline reached after: {exc}"), lease=lease)
    log.warning("job %s: %s; retry %d in %.1fs", job_id, exc, retries + 1, delay_s)
    # not_before: a re-sent step (reconciler) must not ask before the server allowed it either.
    # A poll's retry is its next planned poll: poll lag is measured against next_poll_at.
    retry_at = time.time() + delay_s
    rt.jobs().update(
        job_id,
        {
            "last_error": exc.message,
            "not_before": retry_at,
            "next_poll_at": retry_at if lease is not None else None,
        },
        check_at=check_at(delay_s),
    )
    raise task.retry(exc=exc, countdown=dispatch.broker_countdown_s(delay_s))


def _new_job_id(job_id: object) -> str:
    return str(uuid.uuid4()) if job_id is None else validation.job_id(job_id)


def _reject(job_id: object, exc: errors.InvalidInput, notify_url: object) -> str:
    """Bad arguments: record an INVALID_INPUT outcome under a usable job id, lose nothing."""
    try:
        jid = _new_job_id(job_id)
    except errors.InvalidInput:
        jid = str(uuid.uuid4())
    logctx.bind_job(jid)
    try:
        url = validation.notify_url(notify_url)
    except errors.InvalidInput:
        url = None
    log.warning("job %s rejected: %s", jid, exc.message)
    if rt.jobs().create(jid, {"status": "failed", "notify_url": url}, ttl_s=0, check_at=None):
        fail(jid, exc)
    return jid


@shared_task(name=names.SUBMIT_TTS, time_limit=API_TIME_LIMIT_S, **COMMON)
def submit_tts(
    self: Task,  # type: ignore[type-arg]
    text: str,
    model: str,
    *,
    voice: str | None = None,
    speed: float | None = None,
    response_format: str | None = None,
    instructions: str | None = None,
    stability: float | None = None,
    similarity_boost: float | None = None,
    style: float | None = None,
    notify_url: str | None = None,
    job_id: str | None = None,
) -> str:
    """Submit one text; the job continues by polling, downloading or storing. Returns the job id."""
    try:
        jid = _new_job_id(job_id)
        logctx.bind_job(jid)
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
        return _reject(job_id, exc, notify_url)

    store = rt.jobs()
    owner = self.request.id or jid
    # The request is kept so the reconciler can re-send a submit whose message was lost.
    fields = {
        "status": "submitting",
        "model": request.model,
        "notify_url": url,
        "submit_owner": owner,
        "request": {**request.body(), "notify_url": url, "job_id": jid},
    }
    ttl_s = rt.settings().poll_timeout_s
    if not store.create(jid, fields, ttl_s=ttl_s, check_at=check_at(API_TIME_LIMIT_S)):
        job = store.get(jid)
        # Our own earlier attempt (a retry or a redelivery) may go on; anything else is a duplicate.
        if job is None or job.submit_owner != owner or job.status != "submitting":
            log.info("job %s already exists; duplicate submit ignored", jid)
            return jid
    if _poisoned(self, jid):
        return jid

    try:
        answer = rt.nanogpt().submit(request)
    except errors.TransientError as exc:
        return _retry_or_fail(self, exc, jid, max_retries=rt.settings().max_retries)
    except errors.PermanentError as exc:
        return fail(jid, exc)

    if isinstance(answer, Ticket):
        _start_polling(jid, answer)
    elif isinstance(answer, AudioLink):
        store.update(
            jid,
            {"status": "downloading", "audio_url": answer.audio_url},
            check_at=check_at(rt.settings().download_timeout_s),
        )
        dispatch.download(jid)
    elif isinstance(answer, InlineAudio):
        _store_inline(self, jid, answer)
    return jid


def _start_polling(job_id: str, ticket: Ticket) -> None:
    s = rt.settings()
    now = time.time()
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
    token = rt.jobs().hand_over(
        job_id,
        {
            "run_id": ticket.run_id,
            "model": ticket.model,
            "cost": ticket.cost,
            "payment_source": ticket.payment_source,
            "next_poll_at": now + first_s,
        },
        deadline_at=deadline_at,
        check_at=check_at(first_s),
        park_at=park_at,
    )
    if park_at is None:
        dispatch.poll(
            ticket.run_id, ticket.model, lease=token, seq=0, countdown_s=first_s, job_id=job_id
        )


def _store_inline(task: Task, job_id: str, answer: InlineAudio) -> None:  # type: ignore[type-arg]
    s = rt.settings()
    started_at = time.monotonic()
    try:
        stored = storage.store_response(
            answer.response,
            store=rt.audio_store(),
            job_id=job_id,
            max_bytes=s.max_audio_bytes,
            timeout_s=s.download_timeout_s,
        )
    except errors.TransientError as exc:
        _retry_or_fail(task, exc, job_id, max_retries=DOWNLOAD_MAX_RETRIES)
        return
    except errors.PermanentError as exc:
        fail(job_id, exc)
        return
    metrics.downloaded(stored.bytes, time.monotonic() - started_at)
    succeed(job_id, stored)


@shared_task(name=names.POLL_TTS, time_limit=API_TIME_LIMIT_S, **COMMON)
def poll_tts(
    self: Task,  # type: ignore[type-arg]
    run_id: str,
    model: str,
    *,
    cost: float | None = None,
    payment_source: str | None = None,
    is_api_request: bool = True,
    notify_url: str | None = None,
    job_id: str | None = None,
    lease: str | None = None,
    seq: int = 0,
) -> str:
    """Check a run's status once; re-queue with a countdown while pending. Returns the job id.

    ``lease`` and ``seq`` are internal: the chain's token and this poll's number. Callers leave
    them out; a call without them starts a new chain unless the job id is already known.
    """
    try:
        jid = validation.job_id(run_id if job_id is None else job_id)
        logctx.bind_job(jid)
        request = validation.poll_request(
            run_id, model, cost=cost, payment_source=payment_source, is_api_request=is_api_request
        )
        url = validation.notify_url(notify_url)
    except errors.InvalidInput as exc:
        return _reject(job_id, exc, notify_url)

    s = rt.settings()
    store = rt.jobs()
    if lease is None:
        now = time.time()
        lease = store.start_chain(
            jid,
            {
                "run_id": request.run_id,
                "model": request.model,
                "cost": request.cost,
                "payment_source": request.payment_source,
                "is_api_request": is_api_request,
                "notify_url": url,
                "next_poll_at": now,
                "chain_owner": self.request.id,
            },
            deadline_at=now + s.poll_timeout_s,
            check_at=check_at(0),
        )
        if lease is None:
            lease = _resumed_chain(jid, self.request.id)
            if lease is None:
                log.info("job %s already exists; duplicate poll chain ignored", jid)
                return jid
        seq = 0

    job, deliveries = _load(self, jid, seq)
    if job is None or not job.holds(lease, seq):
        log.info("job %s: poll %s is not the current one; exiting", jid, seq)
        return jid
    if _poisoned(self, jid, deliveries):
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
    metrics.poll_lag(job.next_poll_at)
    deadline_at = job.deadline_at or time.time()
    if time.time() >= deadline_at:
        return fail(
            jid, errors.DeadlineExceeded("the job did not finish before its deadline"), lease=held
        )

    try:
        result = rt.nanogpt().status(request)
    except errors.TransientError as exc:
        metrics.poll("retry")
        return _retry_or_fail(
            self, exc, jid, max_retries=s.max_retries, deadline_at=deadline_at, lease=held
        )
    except errors.PermanentError as exc:
        metrics.poll("failed")
        return fail(jid, exc, lease=held, polls=job.polls + 1)

    if isinstance(result, Failed):
        metrics.poll("failed")
        return fail(jid, result.error, lease=held, polls=job.polls + 1)
    if isinstance(result, AudioLink):
        metrics.poll("completed")
        if store.end_polling(
            jid,
            lease,
            seq,
            {"status": "downloading", "last_status": "completed", "audio_url": result.audio_url},
            check_at=check_at(s.download_timeout_s),
        ):
            dispatch.download(jid)
        return jid
    metrics.poll("pending")
    return _requeue(job, result, request, held, deadline_at)


def _resumed_chain(job_id: str, task_id: str | None) -> str | None:
    """The lease of a chain this very message started before it was redelivered, if unmoved."""
    job = rt.jobs().get(job_id)
    if job is None or task_id is None or job.chain_owner != task_id or job.seq != "0":
        return None
    return job.token


def _requeue(
    job: Job,
    pending: Pending,
    request: validation.PollRequest,
    held: tuple[str, int],
    deadline_at: float,
) -> str:
    s = rt.settings()
    now = time.time()
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
            job.job_id, errors.DeadlineExceeded("still pending at the deadline"), lease=held
        )
    if pending.status != "pending":
        log.info("job %s: status %r treated as pending", job.job_id, pending.status)
    lease, seq = held
    # Parked in Redis, the next poll is recorded in the same atomic step as the lease moves.
    park_at = now + delay_s if s.polls_wait_in_redis else None
    if not rt.jobs().advance(
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
        check_at=check_at(delay_s),
        park_at=park_at,
    ):
        return job.job_id
    if park_at is not None:
        return job.job_id
    dispatch.poll(
        request.run_id,
        request.model,
        lease=lease,
        seq=seq + 1,
        countdown_s=delay_s,
        job_id=job.job_id,
    )
    return job.job_id


@shared_task(name=names.DOWNLOAD_AUDIO, time_limit=DOWNLOAD_TIME_LIMIT_S, **COMMON)
def download_audio(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """Stream the job's audio into the audio store, record the outcome, queue the webhook."""
    logctx.bind_job(job_id)
    job, deliveries = _load(self, job_id)
    if job is None:
        log.error("download for unknown job %s dropped", job_id)
        return job_id
    if job.outcome is not None:
        # A redelivery after the outcome was recorded: make sure the webhook is on its way.
        if job.notify_state == "queued":
            dispatch.notify(job_id)
        return job_id
    if _poisoned(self, job_id, deliveries):
        return job_id
    if not job.audio_url:
        return fail(job_id, errors.InvalidResponse("no audio URL recorded for the job"))
    s = rt.settings()
    started_at = time.monotonic()
    try:
        stored = storage.download(
            rt.safe_http(),
            job.audio_url,
            store=rt.audio_store(),
            job_id=job_id,
            max_bytes=s.max_audio_bytes,
            timeout_s=s.download_timeout_s,
        )
    except errors.TransientError as exc:
        return _retry_or_fail(self, exc, job_id, max_retries=DOWNLOAD_MAX_RETRIES)
    except errors.PermanentError as exc:
        return fail(job_id, exc)
    metrics.downloaded(stored.bytes, time.monotonic() - started_at)
    return succeed(job_id, stored)


@shared_task(name=names.NOTIFY, time_limit=NOTIFY_TIME_LIMIT_S, **COMMON)
def notify(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """POST the job's outcome to its ``notify_url``, signed; retried until accepted or expired."""
    logctx.bind_job(job_id)
    store = rt.jobs()
    job, deliveries = _load(self, job_id)
    if job is None or job.outcome is None or job.notify_state not in (None, "queued"):
        return job_id
    if not job.notify_url:
        store.finish_notify(job_id, "none")
        return job_id
    if _poisoned(self, job_id, deliveries):
        return job_id
    s = rt.settings()
    retries = self.request.retries
    delay_s = schedule.retry_delay_s(
        retries, base_s=s.webhook_retry_delay_s, max_s=s.webhook_max_retry_delay_s
    )
    owner = self.request.id or job_id
    if not store.claim_notify(job_id, owner, lease_s=delay_s + NOTIFY_LEASE_SLACK_S):
        return job_id
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    body = webhooks.outcome_body(job_id, job.run_id, job.model, job.outcome)
    if "audio" in body:
        # A presigned URL expires: each attempt carries one signed now, not at download time.
        body["audio"] = rt.audio_store().fresh(body["audio"])
    attempts = job.notify_attempts + 1
    try:
        webhooks.deliver(
            rt.safe_http(),
            job.notify_url,
            body,
            msg_id=webhooks.message_id(job_id),
            secret=secret,
        )
    except errors.TransientError as exc:
        started_at = job.finished_at or time.time()
        if time.time() + delay_s - started_at > s.webhook_retry_period_s:
            log.error("job %s: webhook given up after %d attempts: %s", job_id, attempts, exc)
            metrics.webhook("expired")
            store.finish_notify(
                job_id, "expired", notify_attempts=attempts, notify_error=exc.message
            )
            return job_id
        log.warning(
            "job %s: webhook attempt %d failed (%s); next in %.1fs", job_id, attempts, exc, delay_s
        )
        metrics.webhook("failed")
        store.update(
            job_id,
            {"notify_attempts": attempts, "notify_error": exc.message},
            check_at=check_at(delay_s + NOTIFY_LEASE_SLACK_S),
        )
        raise self.retry(exc=exc, countdown=dispatch.broker_countdown_s(delay_s)) from None
    except errors.PermanentError as exc:
        state: metrics.WebhookResult = "gone" if isinstance(exc, errors.WebhookGone) else "refused"
        log.warning("job %s: webhook %s: %s", job_id, state, exc)
        metrics.webhook(state)
        store.finish_notify(job_id, state, notify_attempts=attempts, notify_error=exc.message)
        return job_id
    metrics.webhook("delivered")
    store.finish_notify(job_id, "delivered", notify_attempts=attempts, notified_at=time.time())
    return job_id


@shared_task(name=names.RECONCILE)
def reconcile_jobs() -> dict[str, int]:
    """Re-send the lost step of every overdue job (also run by every worker on a timer)."""
    return dict(reconcile.scan(rt.jobs(), recheck_after_s=rt.settings().recovery_grace_s))
