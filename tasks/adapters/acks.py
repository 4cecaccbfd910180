"""When a message may be acknowledged: what a step that raised instead of returning gets.

The rule (Sidekiq's, Temporal's): a message is acknowledged only once its job is durable or its
outcome is recorded. A step returns when that holds (the job id, or a :class:`steps.Retry`);
anything it *raises* means it may not hold, so the message must not be acked as done.

Why a retry of the very same message, from :func:`tasks.adapters.tts._run` (the one place every task
passes through), rather than giving the message back (``reject(requeue=True)``) or acking and
leaving the job to the reconciler:

* ``Task.retry`` publishes a copy (same task id, so the same job; on RabbitMQ the publish is
  confirmed, ``confirm_publish``) *before* the original is acked, with a countdown: the work
  waits out the fault instead of spinning on it, and on either broker no copy is lost in
  between. A requeue would hand the message straight back (a hot loop while Redis is down).
* The reconciler cannot help when the fault struck before the job had a record (the receive
  handler's write failed too): then the message is all there is.

Two kinds of error, two bounds (:func:`after_error`):

* **The job store is unavailable** (:func:`store_unavailable`: refused or dropped connection,
  timeout, ``LOADING`` after a restart, ``OOM`` at ``maxmemory``, ``READONLY`` during a
  failover, ``MASTERDOWN``, ``TRYAGAIN``, ``BUSY``). Retried with exponential backoff capped at
  ``TTS_RETRY_MAX_DELAY``, with **no count cap**: while the store is down the job's record (and
  so its deadline) cannot be read, and nothing else can be recorded either, so ending the job
  would mean dropping it unannounced. The bound is the step's own: the first run after the
  store answers again meets its deadline check (the job's ``TIMEOUT``, the webhook's retry
  period) and ends the job if it is past. A store that never comes back leaves the messages
  cycling at the capped backoff, as they would wait in a queue. These retries do not use up
  the step's own (``TTS_MAX_RETRIES``, for NanoGPT's faults): they are counted apart, in a
  message header. A step's own publish that meets a broker that is down
  (``kombu.exceptions.OperationalError``) is such a wait as well.
* **Anything else** (a bug, a crafted message that trips one, a job-store error that is about
  this message rather than the store, such as ``WRONGTYPE``): retried the same way, counted in
  another header, at most ``TTS_MAX_DELIVERIES`` times; then the job is failed with an announced
  outcome (``WORKER_LOST``, as for a step that keeps crashing its process), so a bug costs one
  job, not a loop. Only if even that cannot be recorded is the message dropped, with an error.

What a submit learnt and could not record travels with its retry
(:class:`tasks.steps.AnswerUnrecorded`, the internal ``accepted`` argument): NanoGPT's answer
to the paid POST, or a POST claim whose reply was lost before anything was sent. Without it the
retry would find the job ``posting`` with nothing to go on, and it would end
``SUBMIT_UNCONFIRMED`` (with no POST at all, in the second case).

If the copy cannot be published (the broker is down too), the original is given back to the
broker (``Reject(requeue=True)``), never acked. ``task_acks_on_failure_or_timeout`` is off
(tasks/config/celery_config.py): a hard time limit then re-queues the message (the delivery count
parks one that keeps hitting it), and anything that still escapes is rejected, not acked as
done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
import redis

from tasks import errors, names
from tasks.nanogpt import validation
from tasks.pacing import schedule
from tasks.record.states import NotifyState
from tasks.steps import Delivery, accept
from tasks.steps.context import Ctx
from tasks.steps.outcomes import failed
from tasks.steps.submit import AnswerUnrecorded

log = logging.getLogger(__name__)

# Message headers that count this message's copies re-sent by :func:`after_error` (Celery keeps
# custom headers across ``Task.retry``): apart from ``retries``, which counts the step's own.
STORE_RETRIES_HEADER = "tts_store_retries"
CRASHES_HEADER = "tts_crashes"

# The replies (their first word) of a Redis that cannot serve now but will: a restart loading
# its data, ``maxmemory`` with ``noeviction``, a replica during a failover, a busy script.
UNAVAILABLE_REPLIES = ("LOADING", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "BUSY")
# The classes redis-py maps some of those replies to (dropping the first word from the text).
_UNAVAILABLE_CLASSES = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
)


def store_unavailable(exc: BaseException) -> bool:
    """True for a job-store error that says the store cannot serve now (and will again)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, *_UNAVAILABLE_CLASSES)):
        return True  # refused, reset, timed out, LOADING (BusyLoadingError), OOM, READONLY
    if isinstance(exc, redis.ResponseError):
        return str(exc).split(" ", 1)[0].upper() in UNAVAILABLE_REPLIES
    return False


@dataclass(frozen=True)
class Resent:
    """How often this message was re-sent after an error (from its headers)."""

    store: int = 0
    crashes: int = 0

    @classmethod
    def of(cls, headers: dict[str, Any] | None) -> Resent:
        """The counts a message carries; 0 for a header that is missing or not a count."""
        given = headers or {}
        return cls(_count(given.get(STORE_RETRIES_HEADER)), _count(given.get(CRASHES_HEADER)))

    @property
    def total(self) -> int:
        return self.store + self.crashes

    def headers(self) -> dict[str, int]:
        return {STORE_RETRIES_HEADER: self.store, CRASHES_HEADER: self.crashes}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Resend(Exception):
    """Why a message was sent again, as Celery's ``task-retried`` event shows it: the error's
    class and where, not its text (which may quote anything; our log has the traceback)."""


@dataclass(frozen=True)
class Again:
    """Send this message again in ``wait_s`` seconds, carrying ``resent``; ``reason`` for
    Celery's retry."""

    wait_s: float
    resent: Resent
    reason: Resend


def after_error(
    ctx: Ctx,
    d: Delivery,
    exc: Exception,
    resent: Resent,
    job_of: Callable[[], str | None],
) -> Again | None:
    """What to do with a message whose step raised ``exc``: :class:`Again` (a retry of the
    same message), or None once a step that keeps failing has been ended with an announced
    outcome (the message may then be acked). ``job_of`` names the message's job, if it can."""
    s = ctx.settings
    if isinstance(exc, AnswerUnrecorded) and exc.__cause__ is not None:
        exc = exc.__cause__  # type: ignore[assignment]  # what failed: the store, or a bug
    if store_unavailable(exc) or isinstance(exc, kombu.exceptions.OperationalError):
        # A step's own publish meeting a broker that is down is a wait too, not a bug.
        after = Resent(resent.store + 1, resent.crashes)
        wait_s = schedule.retry_delay_s(
            resent.store, base_s=s.retry_base_delay_s, max_s=s.retry_max_delay_s
        )
        log.warning(
            "%s: the job store (or broker) is unavailable (%s: %s); retry %d in %.1fs",
            d.name,
            type(exc).__name__,
            exc,
            after.store,
            wait_s,
        )
        return Again(wait_s, after, Resend(f"job store unavailable: {type(exc).__name__}"))
    after = Resent(resent.store, resent.crashes + 1)
    if after.crashes < s.max_deliveries:
        wait_s = schedule.retry_delay_s(
            resent.crashes, base_s=s.retry_base_delay_s, max_s=s.retry_max_delay_s
        )
        log.exception(
            "%s raised; run %d of at most %d in %.1fs",
            d.name,
            after.crashes + 1,
            s.max_deliveries,
            wait_s,
        )
        return Again(wait_s, after, Resend(f"{type(exc).__name__} in {d.name}"))
    log.exception("%s raised for the %d. time; ending its job", d.name, after.crashes)
    try:
        give_up(ctx, d, job_of(), f"{d.name} raised {after.crashes} times: {type(exc).__name__}")
    except Exception as last:
        if store_unavailable(last):  # the store went away meanwhile: wait for it
            unavailable = Resend(f"job store unavailable: {type(last).__name__}")
            return Again(s.retry_max_delay_s, Resent(resent.store + 1, resent.crashes), unavailable)
        log.critical("%s: could not end its job either; the message is dropped", d.name)
    return None


def give_up(ctx: Ctx, d: Delivery, job_id: str | None, why: str) -> None:
    """End the job of a step that keeps raising, announced as ``WORKER_LOST`` (a webhook that
    keeps raising is ``expired``); a cancel that keeps raising changes nothing."""
    if job_id is None or d.name == names.CANCEL:
        log.error("%s: %s; no job to end", d.name, why)
        return
    lost = errors.WorkerLost(why)
    if d.name == names.NOTIFY:
        ctx.jobs.finish_notify(job_id, NotifyState.EXPIRED, notify_error=lost.message)
    elif not failed(ctx, job_id, lost):
        log.error("job %s: %s; it had ended already (or has no record)", job_id, why)


def job_of(name: str, d: Delivery, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The job a message is for, as its step would name it; None when no job can be named."""
    try:
        if name == names.SUBMIT_TTS:
            return accept.usable_job_id(d, kwargs.get("job_id"))
        if name == names.POLL_TTS:
            run_id = args[0] if args else kwargs.get("run_id")
            given = kwargs.get("job_id")
            return validation.job_id(run_id if given is None else given)
        given = args[0] if args else kwargs.get("job_id")
        return given if isinstance(given, str) else None
    except errors.InvalidInput:
        return None
