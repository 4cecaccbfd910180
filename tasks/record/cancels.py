"""Cancels that came before their job: a ``tts.cancel`` naming a job id with no record yet
(its submit still waits in the queue, no worker has received it) is remembered here, as
Celery's ``revoke`` remembers a task id it has not seen; the record made later for that id
ends ``CANCELLED`` at once (tasks/steps/accept.py).

One string key per job id, the cancel's outcome id, kept ``TTS_JOB_TTL``: the first cancel's
is kept, so the same message run again finds its own.
"""

from __future__ import annotations

import redis

#: ``+ job id``: the outcome id of a cancel that came before the job's record.
CANCEL_PREFIX = "tts:cancel:"


def remember(client: redis.Redis, job_id: str, outcome_id: str, *, ttl_s: int) -> None:
    """Keep ``outcome_id`` for ``job_id`` unless an earlier cancel's is kept."""
    client.set(CANCEL_PREFIX + job_id, outcome_id, nx=True, ex=max(1, ttl_s))


def remembered(client: redis.Redis, job_id: str) -> str | None:
    """The outcome id of a cancel that came before ``job_id``'s record, if one did."""
    value = client.get(CANCEL_PREFIX + job_id)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
