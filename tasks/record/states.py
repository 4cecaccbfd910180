"""The states a job goes through, and the questions every module asks about them.

::

    submitting ──► posting ──► polling ──► downloading ──► completed
        ▲    (POST in flight)      │             │
        └── refused (429, 503,     └─────────────┴──────────► failed
            connect error)

``submitting``: the record exists (made when a worker received the message, or by the submit
itself); no POST is in flight. ``posting``: one execution holds the right to send the paid
``POST /api/tts`` until its lease runs out (``lease_until``); nobody else may send it. A POST
that provably was not accepted returns the job to ``submitting``; one whose fate is unknown
ends the job as ``SUBMIT_UNCONFIRMED`` instead of being sent again. The transitions themselves
live in :mod:`tasks.record.jobs` (one atomic script each); this module only names the states and
answers questions about a job read from Redis, so no other module compares status strings
itself.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.record.jobs import Job


class Status(enum.StrEnum):
    SUBMITTING = "submitting"
    POSTING = "posting"
    POLLING = "polling"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"


class NotifyState(enum.StrEnum):
    """Where a finished job's webhook stands; only ``queued`` still has work to do."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    GONE = "gone"
    REFUSED = "refused"
    EXPIRED = "expired"
    NONE = "none"  # the caller gave no notify_url


class Step(enum.StrEnum):
    """The step a job waits on: what the reconciler re-sends when it is overdue."""

    SUBMIT = "submit"
    POLL = "poll"
    DOWNLOAD = "download"
    NOTIFY = "notify"


#: The ``seq`` of a poll chain that ended (completed, failed or superseded): no message holds it.
SEQ_DONE = "-1"
ACTIVE = frozenset({Status.SUBMITTING, Status.POSTING, Status.POLLING, Status.DOWNLOADING})
FINAL = frozenset({Status.COMPLETED, Status.FAILED})


#: What ``tts.cancel`` answers (and ``tts-worker cancel`` prints): it ended the job, the job
#: had already ended (:func:`already_ended`), or there is no such job.
CANCELLED = "cancelled"
UNKNOWN_JOB = "unknown job"


def already_ended(status: str) -> str:
    """A cancel's answer for a job that had ended before it (``already ended: completed``)."""
    return f"already ended: {status}"


def has_live_poll(job: Job) -> bool:
    """Whether the job's poll chain is open: a poll message (or a parked poll) is due."""
    return (
        job.status == Status.POLLING
        and bool(job.run_id and job.model and job.token)
        and job.seq not in (None, SEQ_DONE)
    )


def notify_pending(job: Job) -> bool:
    """Whether the job has an outcome whose webhook still has to be sent."""
    return job.outcome is not None and job.notify_state in (None, NotifyState.QUEUED)


def submit_to_resend(job: Job) -> tuple[dict[str, Any], str] | None:
    """The caller's request and the task id to send the job's submit again under, while the job
    waits on its submit (``submitting``, or ``posting`` with its POST's fate still open); else
    None. Sent under that same task id, a copy is recognised as the same message."""
    if job.status in (Status.SUBMITTING, Status.POSTING) and job.request and job.owner:
        return job.request, job.owner
    return None


def next_step(job: Job) -> Step | None:
    """The step the job is waiting on, or None when it needs nothing more from us."""
    if job.outcome is not None:
        return Step.NOTIFY if notify_pending(job) else None
    if has_live_poll(job):
        return Step.POLL
    if job.status == Status.DOWNLOADING:
        return Step.DOWNLOAD
    if submit_to_resend(job) is not None:
        return Step.SUBMIT
    return None
