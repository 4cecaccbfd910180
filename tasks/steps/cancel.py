"""The cancel step: end a job that has not ended, as ``failed`` with ``CANCELLED``.

It is one first-writer-wins :meth:`JobStore.settle`, from whatever state the job is in; what
stops the job's other messages are the guards they already meet:

* ``submitting``: the submit's ``begin_post`` needs ``submitting``, so no POST is sent;
* ``posting``: the POST in flight cannot be called back. Its answer meets a refused
  ``post_accepted``/``audio_ready`` (the submit logs that NanoGPT billed it anyway);
* ``polling``: settle closes the poll chain (``seq`` = done) and removes the parked poll; a
  poll already past its check makes its one status call, and its next transition is refused;
* ``downloading``: a download acts only in ``downloading`` with no outcome, so one that reads
  the job after the cancel stores nothing; one already fetching finishes, its ``succeed`` is
  refused, and it removes the audio it stored.

NanoGPT has no cancel endpoint: a run it accepted may still finish (and be billed) upstream.

A cancel naming a job with no record (its submit waits in a queue no worker has taken it
from) answers ``unknown job`` and is remembered (:mod:`tasks.record.cancels`): the record a
worker makes later for that id ends ``CANCELLED`` at once, with its webhook, before any POST.

The worker that receives a ``tts.cancel`` runs this step at once
(:mod:`tasks.adapters.received`), so a worker killed while holding the message has already
ended the job. The outcome's id is made from the message's task id: the same message run later
(the task itself, or a redelivery) recognises its own cancel and says ``cancelled`` again; any
other cancel says ``already ended: failed``.
"""

from __future__ import annotations

import logging

from tasks import errors, logctx
from tasks.record import cancels
from tasks.record.jobs import cancel_outcome_id
from tasks.record.states import ACTIVE, CANCELLED, UNKNOWN_JOB, Status, already_ended
from tasks.steps.base import Delivery
from tasks.steps.context import Ctx
from tasks.steps.outcomes import failed

log = logging.getLogger(__name__)


def cancel(ctx: Ctx, d: Delivery, job_id: object) -> str:
    """End the job as failed (``CANCELLED``) unless it has ended; say which it was:
    ``cancelled``, ``already ended: <status>`` or ``unknown job``. Two cancels end the job
    once (the second says ``already ended: failed``); one message run twice says
    ``cancelled`` both times."""
    if not isinstance(job_id, str):
        log.error("cancel with a job id that is not a string dropped")
        return UNKNOWN_JOB
    logctx.bind_job(job_id)
    mine = cancel_outcome_id(d.task_id)
    job = ctx.jobs.get(job_id)
    if job is None:
        # Its submit may still wait in a queue: remembered, then read again, so a record made
        # meanwhile is cancelled here, and one made after finds the cancel (accept.py).
        cancels.remember(ctx.jobs.redis, job_id, mine, ttl_s=ctx.settings.job_ttl_s)
        job = ctx.jobs.get(job_id)
    if job is None:
        log.info("cancel for job %s, not received yet: it ends CANCELLED when it is", job_id)
        return UNKNOWN_JOB
    if job.outcome_id == mine:
        return CANCELLED  # this very message ended it (on receipt, or a first run)
    if job.outcome is not None or job.status not in ACTIVE:
        return already_ended(job.status)
    if failed(ctx, job_id, errors.Cancelled("cancelled by the caller"), outcome_id=mine):
        if job.status == Status.POSTING:
            log.warning(
                "job %s cancelled while its POST was in flight: NanoGPT may still accept "
                "(and bill) it",
                job_id,
            )
        return CANCELLED
    # Another outcome landed between the read and the settle: another cancel's, or this very
    # message's own (a copy delivered twice at once), which says so by its outcome id.
    now = ctx.jobs.get(job_id)
    if now is not None and now.outcome_id == mine:
        return CANCELLED
    return already_ended(now.status) if now else UNKNOWN_JOB
