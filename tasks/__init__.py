"""The TTS tasks and the plain code they call.

Apps that only know the task names send them by name (``tasks.names``); Python callers can read
a job's state with :func:`get_job`.
"""

from __future__ import annotations

from typing import Any

from tasks.errors import OUTCOME_CODES, PermanentError, TransientError, TTSError
from tasks.names import CLEANUP_AUDIO, DOWNLOAD_AUDIO, NOTIFY, POLL_TTS, QUEUES, SUBMIT_TTS

__all__ = [
    "CLEANUP_AUDIO",
    "DOWNLOAD_AUDIO",
    "NOTIFY",
    "OUTCOME_CODES",
    "POLL_TTS",
    "QUEUES",
    "SUBMIT_TTS",
    "PermanentError",
    "TTSError",
    "TransientError",
    "get_job",
]


def get_job(job_id: str) -> dict[str, Any] | None:
    """The stored state of a job (status, run id, polls, queue position, outcome...), or None."""
    from tasks import runtime

    job = runtime.jobs().get(job_id)
    return job.public() if job else None
