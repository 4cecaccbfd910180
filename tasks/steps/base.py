"""What every step shares: the message it runs for, the retry it may ask for, and the two
guards every step applies (a delivery count against poison messages; bounded retries)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks import errors, names
from tasks.pacing import schedule
from tasks.record.contract import F
from tasks.record.states import NotifyState
from tasks.steps.context import Ctx
from tasks.steps.outcomes import check_at, fail

log = logging.getLogger(__name__)


# A download is retried less than an API call: each attempt may hold a slot for minutes.
DOWNLOAD_MAX_RETRIES = 3


# Seconds a webhook sender holds its claim beyond the wait before its next attempt; a sender
# that died is replaced once this runs out.
NOTIFY_LEASE_SLACK_S = 120.0


@dataclass(frozen=True)
class Delivery:
    """The message a step runs for: its task name, task id, the step's own retry count, and
    how often it was re-sent after an error (a job-store outage, a crash:
    :mod:`tasks.adapters.acks`), which Celery counts in its retries too but which are no
    retries of the step."""

    name: str
    task_id: str
    retries: int = 0
    resent: int = 0

    def step(self, seq: int = 0) -> str:
        """What a delivery counts for (task, poll number, retry, re-send): a copy redelivered
        or re-sent by the reconciler counts with the original; a copy re-sent after an error
        is a message of its own (else a job-store outage would park its job as poisoned)."""
        key = f"{self.name}:{seq}:{self.retries}"
        return f"{key}:{self.resent}" if self.resent else key


@dataclass(frozen=True)
class Retry:
    """Run this very message again in ``wait_s`` seconds, because of ``error``."""

    wait_s: float
    error: errors.TransientError


Result = str | Retry


def post_lease_s(ctx: Ctx) -> float:
    """How long one POST (and reading a 200 answer's audio) can take, at most."""
    s = ctx.settings
    return schedule.post_claim_s(
        connect_s=s.http_connect_timeout_s,
        read_s=s.http_read_timeout_s,
        audio_s=s.download_timeout_s,
    )


def named_job(d: Delivery, job_id: object) -> str | None:
    """The job id an internal message (download, notify) names, or None for a value no job
    can have: not a string, or one UTF-8 cannot encode (Redis would raise on a lone surrogate
    before the job store could answer "unknown"). Only crafted messages carry such a value."""
    if isinstance(job_id, str):
        try:
            job_id.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return job_id
    log.error("%s with a job id that is no job's dropped", d.name)
    return None


def poisoned(ctx: Ctx, d: Delivery, job_id: str, deliveries: int) -> bool:
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


def past_deadline(exc: errors.TransientError) -> errors.TTSError:
    """The outcome of a transient fault whose retry would come after the job's deadline: a 429
    says so (``RATE_LIMITED``, with NanoGPT's words on which limit), anything else times out."""
    if isinstance(exc, errors.RateLimited):
        return exc.past_deadline()
    return errors.DeadlineExceeded(f"deadline reached after: {exc}")


def retry_or_fail(
    ctx: Ctx,
    d: Delivery,
    exc: errors.TransientError,
    job_id: str,
    *,
    max_retries: int,
    deadline_at: float | None = None,
    lease: tuple[str, int] | None = None,
    retries: int | None = None,
) -> Result:
    """Run this message again after a backoff, or fail the job once retries or time run out.
    ``retries``: how many this step has had, when the record knows more than the message (a
    poll's retry that waited for budget comes back as a fresh message)."""
    s = ctx.settings
    done = d.retries if retries is None else max(d.retries, retries)
    if done >= max_retries:
        return fail(ctx, job_id, exc, lease=lease)
    delay_s = schedule.retry_delay_s(
        done,
        base_s=s.retry_base_delay_s,
        max_s=s.retry_max_delay_s,
        retry_after_s=exc.retry_after_s,
    )
    now = ctx.clock()
    if deadline_at is not None and now + delay_s > deadline_at:
        return fail(ctx, job_id, past_deadline(exc), lease=lease)
    log.warning("job %s: %s; retry %d in %.1fs", job_id, exc, done + 1, delay_s)
    # not_before: a re-sent step (reconciler) must not ask before the server allowed it either.
    # A poll's retry is its next planned poll: poll lag is measured against next_poll_at.
    retry_at = now + delay_s
    ctx.jobs.update(
        job_id,
        {
            "last_error": exc.message,
            "not_before": retry_at,
            "next_poll_at": retry_at if lease is not None else None,
            F.TRIES: done + 1 if lease is not None else None,
        },
        check_at=check_at(ctx, delay_s),
    )
    return Retry(delay_s, exc)
