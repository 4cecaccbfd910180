"""Ending a job (first outcome wins, then its webhook is queued) and when a step is overdue."""

from __future__ import annotations

import logging
import time

from tasks import dispatch, errors, metrics, storage
from tasks import runtime as rt

log = logging.getLogger(__name__)


def check_at(after_s: float) -> float:
    """When a step planned ``after_s`` seconds from now counts as lost if it has not acted.

    Beyond the plan: the recovery grace, and one HTTP call's worth of time (a step that is
    running but waiting on a slow answer is not lost).
    """
    s = rt.settings()
    budget_s = s.recovery_grace_s + s.http_connect_timeout_s + s.http_read_timeout_s
    return time.time() + max(0.0, after_s) + budget_s


def fail(
    job_id: str,
    exc: errors.TTSError,
    *,
    lease: tuple[str, int] | None = None,
    polls: int | None = None,
) -> str:
    """Record a failed outcome (first writer wins) and queue its webhook.

    ``polls``: the poll count including the status call that found the failure, if one did.
    """
    outcome = {"type": "tts.failed", "error": exc.as_dict()}
    if rt.jobs().settle(job_id, outcome, lease=lease, check_at=check_at(0), polls=polls):
        log.info("job %s failed: %s", job_id, exc.code)
        metrics.job_finished(exc.code)
        dispatch.notify(job_id)
    return job_id


def succeed(job_id: str, audio: storage.StoredAudio) -> str:
    """Record a completed outcome (first writer wins) and queue its webhook."""
    outcome = {"type": "tts.completed", "audio": audio.as_dict()}
    if rt.jobs().settle(job_id, outcome, check_at=check_at(0)):
        log.info("job %s completed: %d bytes", job_id, audio.bytes)
        metrics.job_finished("completed")
        dispatch.notify(job_id)
    return job_id
