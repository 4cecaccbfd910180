"""The worker's public contract as constants: task names, queues, Redis keys, statuses.

Copied, not imported: an app installs this package without the worker. tests/client checks
every value here against the worker's own (tasks/names.py, tasks/record/jobs.py,
tasks/record/states.py, tasks/config/celery_config.py), so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

SUBMIT_TTS = "tts.submit_tts"
POLL_TTS = "tts.poll_tts"
CANCEL = "tts.cancel"

SUBMIT_QUEUE = "tts.submit"
POLL_QUEUE = "tts.poll"

#: Where each task this package sends is routed (a cancel is quick, like a poll).
QUEUES = {SUBMIT_TTS: SUBMIT_QUEUE, POLL_TTS: POLL_QUEUE, CANCEL: POLL_QUEUE}

#: On RabbitMQ the worker binds its queues, by their names, to this topic exchange, as quorum
#: queues; a caller declaring them otherwise is refused (PreconditionFailed).
AMQP_EXCHANGE = "tts"
QUORUM = {"x-queue-type": "quorum"}

#: The job record: one Redis hash per job.
JOB_KEY_PREFIX = "tts:job:"
#: The job's progress: a Redis stream, one entry per change of status or queue position.
PROGRESS_KEY_PREFIX = "tts:progress:"

SUBMITTING = "submitting"
POSTING = "posting"
POLLING = "polling"
DOWNLOADING = "downloading"
COMPLETED = "completed"
FAILED = "failed"
STATUSES = (SUBMITTING, POSTING, POLLING, DOWNLOADING, COMPLETED, FAILED)
#: A job in one of these has its outcome: nothing about it changes any more.
ENDED = frozenset({COMPLETED, FAILED})

#: A job's ``priority`` (the worker's ``tasks.record.jobs.Priority``), most urgent first; a job
#: that leaves it out is ``normal``.
INTERACTIVE = "interactive"
NORMAL = "normal"
BULK = "bulk"
PRIORITIES = (INTERACTIVE, NORMAL, BULK)

#: The webhook's event types.
EVENT_COMPLETED = "tts.completed"
EVENT_FAILED = "tts.failed"

#: What a cancel answers (the first three are ``tts.cancel``'s own answers).
CANCELLED = "cancelled"
UNKNOWN_JOB = "unknown job"
ALREADY_ENDED = "already ended: "
#: No answer yet: the cancel is queued and acts when a worker takes it.
CANCEL_SENT = "sent"


def already_ended(status: str) -> str:
    """A cancel's answer for a job that had ended before it (``already ended: completed``)."""
    return ALREADY_ENDED + status


def webhook_id(outcome_id: str) -> str:
    """The ``webhook-id`` of the outcome whose record holds ``outcome_id``."""
    return "msg_" + outcome_id
