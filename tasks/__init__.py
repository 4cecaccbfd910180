"""The TTS tasks and the plain code they call.

Apps that only know the task names send them by name (``tasks.names``); Python callers can read
a job's state with :func:`get_job` and cancel a job with :func:`cancel_job`.
"""

from __future__ import annotations

from typing import Any

from tasks.errors import OUTCOME_CODES, PermanentError, TransientError, TTSError
from tasks.names import CANCEL, CLEANUP_AUDIO, DOWNLOAD_AUDIO, NOTIFY, POLL_TTS, QUEUES, SUBMIT_TTS

__all__ = [
    "CANCEL",
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
    "cancel_job",
    "get_job",
]


def get_job(job_id: str) -> dict[str, Any] | None:
    """The stored state of a job (status, run id, polls, queue position, outcome...), or None."""
    from tasks.adapters import runtime

    job = runtime.jobs().get(job_id)
    return job.public() if job else None


def cancel_job(job_id: str, *, timeout_s: float = 10.0) -> str:
    """Cancel a job that has not ended: it ends as ``tts.failed`` with ``CANCELLED`` and its
    webhook goes out. Returns ``cancelled``, ``already ended: <status>`` or ``unknown job``.

    A worker makes the change (``tts.cancel``); this sends it and waits up to ``timeout_s`` for
    the job's outcome, raising ``TimeoutError`` if no worker took it by then. NanoGPT has no
    cancel endpoint: a run it already accepted may still finish, and is billed.
    """
    from tasks.client import Client
    from tasks.config.settings import get_settings

    with Client(get_settings()) as client:
        return client.cancel(job_id, timeout_s=timeout_s)
