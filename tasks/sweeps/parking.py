"""Waiting polls parked in Redis and released when due, so no worker holds them in memory.

With the Redis transport, a countdown message sits in the memory of the worker that fetched it
until it is due (about 8.7 KB each, Celery issue #5535), and a SIGKILL strands it until the
visibility timeout. Parked instead, a pending job's next poll is only a score in
:data:`tasks.record.jobs.WAIT_KEY`; the job hash already holds the lease and everything the poll
message needs. Every worker runs a releaser (``workers/poll_releaser.py``) that pops the due
ones in one atomic script and publishes their polls with no countdown.

Popping is atomic, so any number of releasers may run: each parked poll is released by exactly
one. While parked, a job's entry in ``tts:due`` waits at its deadline, out of the reconciler's
way (nothing can lose a job that is only a score in Redis; issue 19 found 6,000 parked polls
re-checked every 30 s delaying a lost download by 65 s). The pop moves it back to one recovery
grace from now in the same script, so a releaser that dies between popping and publishing
loses nothing: the reconciler re-sends the step after the grace.

With the NanoGPT budget off (``TTS_UPSTREAM_RATE=0``) the releaser also sends the submits that
wait for budget (:data:`tasks.record.jobs.SUBMIT_WAIT_KEY`, parked while it was on): nothing else
would, and they would wait for their deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from tasks.record.contract import F
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, PARKED_FIELDS, SUBMIT_WAIT_KEY, WAIT_KEY, Job
from tasks.record.states import Status, has_live_poll, submit_to_resend

if TYPE_CHECKING:
    from tasks.pacing.dispatch import Dispatcher

log = logging.getLogger(__name__)

# The hash fields a released submit needs (a poll's are jobs.PARKED_FIELDS).
_SUBMIT_FIELDS = (F.STATUS.value, F.REQUEST.value, F.OWNER.value)

# Pop up to ARGV[2] ids due by ARGV[1] off the wait set KEYS[1], move each one's check time in
# the due set KEYS[2] to ARGV[4] (only if it has one: an ended job may have none), and return
# each with its job's fields ARGV[5..] (false = unset). ARGV[3]: the job key prefix.
_RELEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
redis.call('ZREM', KEYS[1], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  redis.call('ZADD', KEYS[2], 'XX', ARGV[4], id)
  local fields = redis.call('HMGET', ARGV[3] .. id, unpack(ARGV, 5))
  table.insert(fields, 1, id)
  out[i] = fields
end
return out
"""


class Releaser:
    """Pops due parked polls; one per process, shared by its releaser thread.
    ``recovery_grace_s`` (TTS_RECOVERY_GRACE): how long after a pop the reconciler takes the
    job's step for lost."""

    def __init__(self, client: redis.Redis, *, recovery_grace_s: float) -> None:
        self._redis = client
        self._grace_s = recovery_grace_s
        self._release = client.register_script(_RELEASE)

    def _pop(self, key: str, now: float, limit: int, fields: tuple[str, ...]) -> list[Job]:
        args: list[str | int] = [repr(now), limit, KEY_PREFIX, repr(now + self._grace_s), *fields]
        rows = self._release(keys=[key, DUE_KEY], args=args)
        out = []
        for job_id, *values in rows:
            raw = {"job_id": job_id, "status": Status.FAILED}  # an expired job: nothing to do
            raw |= {k: v for k, v in zip(fields, values, strict=True) if v is not None}
            out.append(Job.from_hash(raw))
        return out

    def pop(self, now: float, *, limit: int) -> tuple[int, list[Job]]:
        """Take up to ``limit`` polls due by ``now`` off the wait set: how many entries it took,
        and the jobs they poll.

        Jobs that ended meanwhile (or expired) are dropped here: their poll has nothing to do.
        They count as taken, so a caller that pops batch after batch stops on a short one.
        """
        rows = self._pop(WAIT_KEY, now, limit, PARKED_FIELDS)
        jobs = [job for job in rows if has_live_poll(job)]
        return len(rows), jobs

    def pop_submits(self, now: float, *, limit: int) -> tuple[int, list[Job]]:
        """Take up to ``limit`` submits that wait for budget off their wait set, oldest first;
        like :meth:`pop`, with those no longer submitting (or expired) dropped."""
        rows = self._pop(SUBMIT_WAIT_KEY, now, limit, _SUBMIT_FIELDS)
        live = [j for j in rows if j.status == Status.SUBMITTING and submit_to_resend(j)]
        return len(rows), live

    def put_back(self, jobs: list[Job], due_at: float, *, key: str = WAIT_KEY) -> None:
        """Park ``jobs`` again in the wait set ``key`` (their publish failed); the next tick
        retries them. Their check time stays a grace away: a releaser that stopped for good
        leaves them to the reconciler."""
        if jobs:
            self._redis.zadd(key, {job.job_id: due_at for job in jobs})


def release(releaser: Releaser, send: Callable[[Job], None], *, now: float, limit: int) -> int:
    """Publish every poll due by ``now`` (at most ``limit``); returns how many were taken off
    the wait set (those of ended jobs are taken but not sent): below ``limit``, none is left.

    If publishing fails part way, the polls not yet sent are parked again before the error
    propagates, so a broker blip delays them by a tick instead of a recovery grace.
    """
    popped, jobs = releaser.pop(now, limit=limit)
    for i, job in enumerate(jobs):
        try:
            send(job)
        except Exception:
            releaser.put_back(jobs[i:], now)
            raise
    return popped


def release_submits(
    releaser: Releaser, send: Callable[[Job], None], *, now: float, limit: int
) -> int:
    """With the budget off: publish up to ``limit`` submits that wait for budget (parked while
    it was on), as :func:`release` does polls; returns how many were taken."""
    popped, jobs = releaser.pop_submits(now, limit=limit)
    for i, job in enumerate(jobs):
        try:
            send(job)
        except Exception:
            releaser.put_back(jobs[i:], now, key=SUBMIT_WAIT_KEY)
            raise
    return popped


def release_all(
    releaser: Releaser,
    dispatch: Dispatcher,
    *,
    now: float,
    limit: int,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """With the budget off: publish every poll due by ``now`` and every submit that waits,
    batch after batch of ``limit`` (until ``stop()``); returns how many were taken."""

    def send(job: Job) -> None:
        if job.status == Status.SUBMITTING and (submit := submit_to_resend(job)):
            request, owner = submit
            dispatch.submit(request, task_id=owner)
        else:
            dispatch.poll_job(job)

    taken = 0
    for release_one in (release, release_submits):
        while not stop():
            n = release_one(releaser, send, now=now, limit=limit)
            taken += n
            if n < limit:  # a short batch emptied what was due
                break
    return taken
