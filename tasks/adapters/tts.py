"""The Celery tasks: thin adapters over :mod:`tasks.steps`.

Each unpacks its message, runs the step with this process's :class:`tasks.steps.context.Ctx`, and
turns a :class:`tasks.steps.Retry` into ``Task.retry`` (the same message, same task id, after a
countdown: never a sleep). The job id a caller leaves out is the task id (:func:`steps.submit`).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Reject

from tasks import names, steps
from tasks.adapters import acks, misfit
from tasks.adapters import runtime as rt

log = logging.getLogger(__name__)

# Hard ceilings on one execution (Celery kills the process past these). Generous: HTTP calls
# have their own timeouts; these only catch the unforeseen. The submit's is replaced by one
# derived from the settings (tasks.config.celery_config.submit_time_limit_s, through
# task_annotations), which always outlasts its POST's claim.
API_TIME_LIMIT_S = 120
NOTIFY_TIME_LIMIT_S = 120
# A download's own limits end it by about 185 s with the defaults (5 s connect, 30 s to the
# headers, the 120 s wall clock, one last 30 s read); this only catches what they miss.
DOWNLOAD_TIME_LIMIT_S = 200

COMMON: dict[str, Any] = {
    "bind": True,
    # A message whose arguments do not fit ends as INVALID_INPUT, never as a TypeError.
    "base": misfit.CheckedTask,
    # Redelivered if the worker dies mid-task; the job record makes a repeat harmless.
    "acks_late": True,
    "reject_on_worker_lost": True,
    # A failure or hard time limit is not done: rejected (the time limit: re-queued), never
    # acked. Our own failures never get here: _run turns them into retries (tasks/adapters/acks.py).
    "acks_on_failure_or_timeout": False,
    # Retries are bounded by our own count and deadline, not Celery's default of 3.
    "max_retries": None,
}


def _run(task: Task, step: Any, *args: Any, **kwargs: Any) -> str:  # type: ignore[type-arg]
    """Run ``step`` for this message; the message is acked only when the step returned (its
    job is durable or ended). A step that raised is retried: :mod:`tasks.adapters.acks` says why."""
    request = task.request
    resent = acks.Resent.of(request.headers)
    retries = max(0, (request.retries or 0) - resent.total)
    delivery = steps.Delivery(task.name, request.id or "", retries, resent.total)
    ctx = rt.context()
    try:
        result = step(ctx, delivery, *args, **kwargs)
    except Exception as exc:
        again = acks.after_error(
            ctx, delivery, exc, resent, lambda: acks.job_of(task.name, delivery, args, kwargs)
        )
        if again is None:
            return "ended"
        # NanoGPT's answer that the store could not take travels with the retry (internal).
        carry = {"accepted": exc.answer} if isinstance(exc, steps.AnswerUnrecorded) else None
        wait_s = ctx.dispatch.countdown_s(again.wait_s)
        _retry(task, wait_s, again.resent, again.reason, kwargs=carry)
    if isinstance(result, steps.Retry):
        _retry(task, ctx.dispatch.countdown_s(result.wait_s), resent, result.error)
    return str(result)


# RabbitMQ's dead-lettering marks: a copy that carried them into the native-delay queues again
# would be taken for a dead-letter cycle and dropped (a 1 s retry, then a 3 s one through the
# same 1 s queue, vanished: celery/celery#10111). Celery's own retry filters them; ours passes
# headers of its own, so it must too.
DEAD_LETTER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


def _own_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The message's headers a retry carries on: all but the broker's dead-letter marks."""
    return {k: v for k, v in (headers or {}).items() if k not in DEAD_LETTER_HEADERS}


def _retry(
    task: Task,  # type: ignore[type-arg]
    countdown_s: float,
    resent: acks.Resent,
    exc: Exception,
    *,
    kwargs: dict[str, Any] | None = None,
) -> NoReturn:
    """``Task.retry`` carrying the re-send counts (and ``kwargs`` added to the message's own);
    if the copy cannot be published (the broker is down too), the message goes back to the
    broker instead of being acked."""
    headers = {**_own_headers(task.request.headers), **resent.headers()}
    more: dict[str, Any] = {}
    if kwargs:
        more["kwargs"] = {**(task.request.kwargs or {}), **kwargs}
    try:
        raise task.retry(exc=exc, countdown=countdown_s, headers=headers, **more)
    except Reject as refused:
        # Celery's answer to a publish that failed is reject(requeue=False): the message would
        # be dropped (Redis) or dead-lettered (RabbitMQ). Give it back instead.
        if getattr(refused, "requeue", False):
            raise
        reason = getattr(refused, "reason", refused)
        log.error("%s: its retry could not be published (%s); given back", task.name, reason)
        raise Reject(reason, requeue=True) from exc


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
    tenant: str | None = None,
    priority: str = "normal",
    reuse: bool = True,
    accepted: dict[str, Any] | None = None,
) -> str:
    """Submit one text; the job continues by polling, downloading or storing. Returns the job
    id: ``job_id``, or this message's task id when left out. ``tenant`` (who sent it) and
    ``priority`` (``interactive``, ``normal`` or ``bulk``) set the lane its NanoGPT calls wait
    in (tasks/pacing/fairness.py). ``reuse=False``: never answered by an identical request's audio
    (TTS_REUSE_TTL). ``accepted`` is internal (NanoGPT's
    answer, carried by a retry when the job store could not take it): callers leave it out."""
    return _run(
        self,
        steps.submit,
        text,
        model,
        voice=voice,
        speed=speed,
        response_format=response_format,
        instructions=instructions,
        stability=stability,
        similarity_boost=similarity_boost,
        style=style,
        notify_url=notify_url,
        job_id=job_id,
        tenant=tenant,
        priority=priority,
        reuse=reuse,
        accepted=accepted,
    )


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
    tenant: str | None = None,
    priority: str = "normal",
    lease: str | None = None,
    seq: int = 0,
) -> str:
    """Check a run's status once; re-queue with a countdown while pending. Returns the job id.
    ``tenant`` and ``priority``: as for :func:`submit_tts`, for a chain this call starts.

    ``lease`` and ``seq`` are internal: the chain's token and this poll's number. Callers leave
    them out; a call without them starts a new chain unless the job id is already known.
    """
    return _run(
        self,
        steps.poll,
        run_id,
        model,
        cost=cost,
        payment_source=payment_source,
        is_api_request=is_api_request,
        notify_url=notify_url,
        job_id=job_id,
        tenant=tenant,
        priority=priority,
        lease=lease,
        seq=seq,
    )


@shared_task(name=names.DOWNLOAD_AUDIO, time_limit=DOWNLOAD_TIME_LIMIT_S, **COMMON)
def download_audio(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """Store the job's audio (downloaded, or spooled from the submit), record the outcome."""
    return _run(self, steps.download, job_id)


@shared_task(name=names.NOTIFY, time_limit=NOTIFY_TIME_LIMIT_S, **COMMON)
def notify(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """POST the job's outcome to its ``notify_url``, signed; retried until accepted or expired."""
    return _run(self, steps.notify, job_id)


@shared_task(name=names.CANCEL, time_limit=API_TIME_LIMIT_S, **COMMON)
def cancel(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """End a job that has not ended as failed (``CANCELLED``); returns ``cancelled``,
    ``already ended: <status>`` or ``unknown job``. NanoGPT may still finish (and bill) it."""
    return _run(self, steps.cancel, job_id)
