"""The four Celery tasks. Each unpacks its arguments, calls plain code, and ends in one of:
done, re-queue (a countdown, never a sleep), retry (transient fault), or fail (permanent).

Retry policy by class: :class:`errors.TransientError` is retried with backoff, bounded by
``TTS_MAX_RETRIES`` and the job's deadline; :class:`errors.PermanentError` fails the job at once.
Anything else is a bug and is left to Celery (logged, acked, visible in Flower).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Task, shared_task

from tasks import errors, logctx, metrics, names, schedule, storage, validation, webhooks
from tasks import runtime as rt
from tasks.nanogpt import InlineAudio
from tasks.parsing import AudioLink, Failed, Pending, Ticket
from tasks.redact import kwargs_repr

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

COMMON: dict[str, Any] = {
    "bind": True,
    # Redelivered if the worker dies mid-task; the job record makes a repeat harmless.
    "acks_late": True,
    "reject_on_worker_lost": True,
    # Retries are bounded by our own count and deadline, not Celery's default of 3.
    "max_retries": None,
}


def _fail(job_id: str, exc: errors.TTSError, *, lease: tuple[str, int] | None = None) -> str:
    """Record a failed outcome (first writer wins) and queue its webhook."""
    outcome = {"type": "tts.failed", "error": exc.as_dict()}
    if rt.jobs().settle(job_id, outcome, lease=lease):
        log.info("job %s failed: %s", job_id, exc.code)
        metrics.job_finished(exc.code)
        _queue_notify(job_id)
    return job_id


def _succeed(job_id: str, audio: storage.StoredAudio) -> str:
    if rt.jobs().settle(job_id, {"type": "tts.completed", "audio": audio.as_dict()}):
        log.info("job %s completed: %d bytes", job_id, audio.bytes)
        metrics.job_finished("completed")
        _queue_notify(job_id)
    return job_id


def _queue_notify(job_id: str) -> None:
    notify.apply_async((job_id,), queue=names.NOTIFY_QUEUE)


def _queue_download(job_id: str) -> None:
    download_audio.apply_async((job_id,), queue=names.DOWNLOAD_QUEUE)


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
        return _fail(job_id, exc, lease=lease)
    delay_s = schedule.retry_delay_s(
        retries,
        base_s=s.retry_base_delay_s,
        max_s=s.retry_max_delay_s,
        retry_after_s=exc.retry_after_s,
    )
    if deadline_at is not None and time.time() + delay_s > deadline_at:
        return _fail(job_id, errors.DeadlineExceeded(f"deadline reached after: {exc}"), lease=lease)
    log.warning("job %s: %s; retry %d in %.1fs", job_id, exc, retries + 1, delay_s)
    # A poll's retry is its next planned poll: poll lag is measured against next_poll_at.
    next_poll_at = time.time() + delay_s if lease is not None else None
    rt.jobs().update(job_id, {"last_error": exc.message, "next_poll_at": next_poll_at})
    raise task.retry(exc=exc, countdown=delay_s)


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
    if rt.jobs().create(jid, {"status": "failed", "notify_url": url}, ttl_s=0):
        _fail(jid, exc)
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
    if not store.create(
        jid,
        {"status": "submitting", "model": request.model, "notify_url": url, "submit_owner": owner},
        ttl_s=rt.settings().poll_timeout_s,
    ):
        job = store.get(jid)
        # Our own earlier attempt (a retry or a redelivery) may go on; anything else is a duplicate.
        if job is None or job.submit_owner != owner or job.status != "submitting":
            log.info("job %s already exists; duplicate submit ignored", jid)
            return jid

    try:
        answer = rt.nanogpt().submit(request)
    except errors.TransientError as exc:
        return _retry_or_fail(self, exc, jid, max_retries=rt.settings().max_retries)
    except errors.PermanentError as exc:
        return _fail(jid, exc)

    if isinstance(answer, Ticket):
        _start_polling(jid, answer, notify_url=url)
    elif isinstance(answer, AudioLink):
        store.update(jid, {"status": "downloading", "audio_url": answer.audio_url})
        _queue_download(jid)
    elif isinstance(answer, InlineAudio):
        _store_inline(self, jid, answer)
    return jid


def _start_polling(job_id: str, ticket: Ticket, *, notify_url: str | None) -> None:
    s = rt.settings()
    deadline_at = time.time() + s.poll_timeout_s
    token = rt.jobs().hand_over(
        job_id,
        {
            "run_id": ticket.run_id,
            "model": ticket.model,
            "cost": ticket.cost,
            "payment_source": ticket.payment_source,
            "next_poll_at": time.time(),
        },
        deadline_at=deadline_at,
    )
    kwargs = {
        "cost": ticket.cost,
        "payment_source": ticket.payment_source,
        "notify_url": notify_url,
        "job_id": job_id,
        "lease": token,
        "seq": 0,
    }
    poll_tts.apply_async(
        (ticket.run_id, ticket.model),
        kwargs,
        queue=names.POLL_QUEUE,
        kwargsrepr=kwargs_repr(kwargs),
    )


def _store_inline(task: Task, job_id: str, answer: InlineAudio) -> None:  # type: ignore[type-arg]
    s = rt.settings()
    started_at = time.monotonic()
    try:
        stored = storage.store_response(
            answer.response,
            job_id=job_id,
            dest_dir=s.audio_dir,
            max_bytes=s.max_audio_bytes,
            timeout_s=s.download_timeout_s,
        )
    except errors.TransientError as exc:
        _retry_or_fail(task, exc, job_id, max_retries=DOWNLOAD_MAX_RETRIES)
        return
    except errors.PermanentError as exc:
        _fail(job_id, exc)
        return
    metrics.downloaded(stored.bytes, time.monotonic() - started_at)
    _succeed(job_id, stored)


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
        lease = store.start_chain(
            jid,
            {
                "run_id": request.run_id,
                "model": request.model,
                "cost": request.cost,
                "payment_source": request.payment_source,
                "is_api_request": is_api_request,
                "notify_url": url,
                "next_poll_at": time.time(),
            },
            deadline_at=time.time() + s.poll_timeout_s,
        )
        if lease is None:
            log.info("job %s already exists; duplicate poll chain ignored", jid)
            return jid
        seq = 0

    job = store.get(jid)
    if job is None or not job.holds(lease, seq):
        log.info("job %s: poll %s is not the current one; exiting", jid, seq)
        return jid
    held = (lease, seq)
    metrics.poll_lag(job.next_poll_at)
    deadline_at = job.deadline_at or time.time()
    if time.time() >= deadline_at:
        return _fail(
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
        return _fail(jid, exc, lease=held)

    if isinstance(result, Failed):
        metrics.poll("failed")
        return _fail(jid, result.error, lease=held)
    if isinstance(result, AudioLink):
        metrics.poll("completed")
        if store.end_polling(
            jid,
            lease,
            seq,
            {"status": "downloading", "last_status": "completed", "audio_url": result.audio_url},
        ):
            _queue_download(jid)
        return jid
    metrics.poll("pending")
    return _requeue(jid, result, job.polls, request, url, held, deadline_at)


def _requeue(
    job_id: str,
    pending: Pending,
    polls: int,
    request: validation.PollRequest,
    notify_url: str | None,
    held: tuple[str, int],
    deadline_at: float,
) -> str:
    s = rt.settings()
    now = time.time()
    delay_s = schedule.next_poll_delay_s(
        polls,
        pending.queue_position,
        interval_s=s.poll_interval_s,
        max_interval_s=s.poll_max_interval_s,
        now=now,
        deadline_at=deadline_at,
    )
    if delay_s is None:
        return _fail(job_id, errors.DeadlineExceeded("still pending at the deadline"), lease=held)
    if pending.status not in ("pending",):
        log.info("job %s: status %r treated as pending", job_id, pending.status)
    lease, seq = held
    if not rt.jobs().advance(
        job_id,
        lease,
        seq,
        {
            "last_status": pending.status,
            "queue_position": pending.queue_position,
            "next_poll_at": now + delay_s,
        },
    ):
        return job_id
    kwargs = {
        "cost": request.cost,
        "payment_source": request.payment_source,
        "is_api_request": request.is_api_request,
        "notify_url": notify_url,
        "job_id": job_id,
        "lease": lease,
        "seq": seq + 1,
    }
    poll_tts.apply_async(
        (request.run_id, request.model),
        kwargs,
        countdown=delay_s,
        queue=names.POLL_QUEUE,
        kwargsrepr=kwargs_repr(kwargs),
    )
    return job_id


@shared_task(name=names.DOWNLOAD_AUDIO, **COMMON)
def download_audio(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """Stream the job's audio into ``TTS_AUDIO_DIR``, record the outcome, queue the webhook."""
    logctx.bind_job(job_id)
    store = rt.jobs()
    job = store.get(job_id)
    if job is None:
        log.error("download for unknown job %s dropped", job_id)
        return job_id
    if job.outcome is not None:
        # A redelivery after the outcome was recorded: make sure the webhook is on its way.
        if job.notify_state == "queued":
            _queue_notify(job_id)
        return job_id
    if not job.audio_url:
        return _fail(job_id, errors.InvalidResponse("no audio URL recorded for the job"))
    s = rt.settings()
    started_at = time.monotonic()
    try:
        stored = storage.download(
            rt.safe_http(),
            job.audio_url,
            job_id=job_id,
            dest_dir=s.audio_dir,
            max_bytes=s.max_audio_bytes,
            timeout_s=s.download_timeout_s,
        )
    except errors.TransientError as exc:
        return _retry_or_fail(self, exc, job_id, max_retries=DOWNLOAD_MAX_RETRIES)
    except errors.PermanentError as exc:
        return _fail(job_id, exc)
    metrics.downloaded(stored.bytes, time.monotonic() - started_at)
    return _succeed(job_id, stored)


@shared_task(name=names.NOTIFY, time_limit=NOTIFY_TIME_LIMIT_S, **COMMON)
def notify(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """POST the job's outcome to its ``notify_url``, signed; retried until accepted or expired."""
    logctx.bind_job(job_id)
    store = rt.jobs()
    job = store.get(job_id)
    if job is None or job.outcome is None or job.notify_state not in (None, "queued"):
        return job_id
    if not job.notify_url:
        store.finish_notify(job_id, "none")
        return job_id
    s = rt.settings()
    retries = self.request.retries
    delay_s = min(
        s.webhook_max_retry_delay_s,
        schedule.retry_delay_s(
            retries, base_s=s.webhook_retry_delay_s, max_s=s.webhook_max_retry_delay_s
        ),
    )
    owner = self.request.id or job_id
    if not store.claim_notify(job_id, owner, lease_s=delay_s + NOTIFY_LEASE_SLACK_S):
        return job_id
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else None
    body = webhooks.outcome_body(job_id, job.run_id, job.model, job.outcome)
    attempts = job.notify_attempts + 1
    try:
        webhooks.deliver(
            rt.safe_http(), job.notify_url, body, msg_id=webhooks.message_id(job_id), secret=secret
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
        store.update(job_id, {"notify_attempts": attempts, "notify_error": exc.message})
        raise self.retry(exc=exc, countdown=delay_s) from None
    except errors.PermanentError as exc:
        state: metrics.WebhookResult = "gone" if isinstance(exc, errors.WebhookGone) else "refused"
        log.warning("job %s: webhook %s: %s", job_id, state, exc)
        metrics.webhook(state)
        store.finish_notify(job_id, state, notify_attempts=attempts, notify_error=exc.message)
        return job_id
    metrics.webhook("delivered")
    store.finish_notify(job_id, "delivered", notify_attempts=attempts, notified_at=time.time())
    return job_id
