"""Finding jobs whose next step was lost, and sending that step again.

A step is lost when its message vanished: the worker holding it (prefetched, or a countdown) was
SIGKILLed (Redis gives unacked messages back only after the visibility timeout), a publish failed
during a broker blip, or an ETA message was dropped at shutdown (kombu #533). Every job waiting
on a step sits in the ``tts:due`` sorted set scored by when that step must have acted; past it,
the step is sent again. Jobs sent by callers have a record from the moment a worker receives
their message (:mod:`tasks.adapters.received`), so this covers messages a dead worker had
prefetched too.

Re-sending is always safe: a poll carries the chain's current lease, so if the original message
turns up later only one of the two acts; a submit is re-sent under its own task id and its POST
is claimed once; outcomes and webhooks are claimed once.
"""

from __future__ import annotations

import logging
from collections import Counter

from tasks.record.jobs import Job, Watch
from tasks.record.states import Step, next_step, submit_to_resend
from tasks.steps.context import Ctx

log = logging.getLogger(__name__)

# Jobs re-sent per scan: bounds one scan's work; the rest wait for the next scan.
SCAN_LIMIT = 500


def resend(ctx: Ctx, job: Job, step: Step, *, now: float) -> bool:
    """Publish ``step`` for ``job`` again, exactly as the pipeline would have; False if it was
    not lost (parked, waiting for its turn) and nothing was sent.

    A poll that must not run before a later time (Retry-After) is parked in Redis until then.
    """
    if step in (Step.POLL, Step.SUBMIT) and ctx.jobs.parked(job.job_id):
        # Not lost: parked, waiting for its turn or for NanoGPT budget. It is in Redis, nothing
        # can lose it, so it is not looked at again before its deadline (a releaser that takes
        # it moves the check back, tasks/sweeps/granting.py); re-checking parked jobs every grace
        # made the scan crawl through them while lost steps waited (issue 19: 65 s late behind
        # 6,000). At the deadline it is taken out and sent, and the step ends the job (TIMEOUT)
        # without calling NanoGPT.
        if job.deadline_at is not None and now < job.deadline_at:
            ctx.jobs.recheck_at(job.job_id, job.deadline_at)
            return False
        ctx.jobs.unpark(job.job_id)
    if step == Step.POLL:
        if job.not_before is not None and job.not_before > now:
            ctx.jobs.park(job.job_id, job.not_before)
        else:
            ctx.dispatch.poll_job(job)
    elif step == Step.DOWNLOAD:
        ctx.dispatch.download(job.job_id)
    elif step == Step.NOTIFY:
        ctx.dispatch.notify(job.job_id)
    elif step == Step.SUBMIT and (submit := submit_to_resend(job)):
        request, owner = submit
        ctx.dispatch.submit(request, task_id=owner)
    return True


def scan(ctx: Ctx, *, now: float | None = None) -> Counter[str]:
    """Re-send the lost step of every overdue job; returns how many of each kind."""
    now = ctx.clock() if now is None else now
    store = ctx.jobs
    sent: Counter[str] = Counter()
    for job_id in store.overdue(now, limit=SCAN_LIMIT):
        job = store.get(job_id)
        step = next_step(job) if job else None
        if job is None or step is None:
            store.recheck_at(job_id, Watch.DROP)
            continue
        # Move the check first: if the publish below fails, the next scan tries again.
        store.recheck_at(job_id, now + ctx.settings.recovery_grace_s)
        if resend(ctx, job, step, now=now):
            sent[step] += 1
    if sent:
        log.warning("reconciler re-sent lost steps: %s", dict(sent))
    return sent
