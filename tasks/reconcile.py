"""Finding jobs whose next step was lost, and sending that step again.

A step is lost when its message vanished: the worker holding a countdown was SIGKILLed (Redis
gives unacked messages back only after the visibility timeout), a publish failed during a
broker blip, or an ETA message was dropped at shutdown (kombu #533). Every job waiting on a step
sits in the ``tts:due`` sorted set scored by when that step must have acted; past it, the step
is sent again. Re-sending is always safe: a poll carries the chain's current lease, so if the
original message turns up later only one of the two acts; outcomes and webhooks are claimed
once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from tasks import dispatch
from tasks.jobs import Job, JobStore

log = logging.getLogger(__name__)

# Jobs re-sent per scan: bounds one scan's work; the rest wait for the next scan.
SCAN_LIMIT = 500


def next_step(job: Job) -> str | None:
    """The step a job is waiting on: ``submit``, ``poll``, ``download``, ``notify`` or None."""
    if job.outcome is not None:
        return "notify" if job.notify_state in (None, "queued") else None
    if job.status == "polling" and job.token and job.seq not in (None, "-1"):
        return "poll"
    if job.status == "downloading":
        return "download"
    if job.status == "submitting" and job.request and job.submit_owner:
        return "submit"
    return None


def resend(job: Job, step: str, *, now: float, store: JobStore | None = None) -> None:
    """Publish ``step`` for ``job`` again, exactly as the pipeline would have.

    With ``store`` (polls wait in Redis), a poll that must not run before a later time
    (Retry-After) is parked until then instead of sent with a countdown.
    """
    if step == "poll":
        wait_s = (job.not_before or now) - now
        if store is not None and wait_s > 0:
            store.park(job.job_id, now + wait_s)
        else:
            dispatch.poll_job(job, countdown_s=wait_s)
    elif step == "download":
        dispatch.download(job.job_id)
    elif step == "notify":
        dispatch.notify(job.job_id)
    elif step == "submit":
        if not (job.request and job.submit_owner):
            return
        dispatch.submit(job.request, task_id=job.submit_owner)


def scan(
    store: JobStore, *, recheck_after_s: float, park: bool = False, now: float | None = None
) -> Counter[str]:
    """Re-send the lost step of every overdue job; returns how many of each kind.

    ``park``: polls wait in Redis (``TTS_POLL_WAIT``), so a delayed re-send is parked there.
    """
    now = time.time() if now is None else now
    sent: Counter[str] = Counter()
    for job_id in store.overdue(now, limit=SCAN_LIMIT):
        job = store.get(job_id)
        step = next_step(job) if job else None
        if job is None or step is None:
            store.recheck_at(job_id, None)
            continue
        # Move the check first: if the publish below fails, the next scan tries again.
        store.recheck_at(job_id, now + recheck_after_s)
        resend(job, step, now=now, store=store if park else None)
        sent[step] += 1
    if sent:
        log.warning("reconciler re-sent lost steps: %s", dict(sent))
    return sent
