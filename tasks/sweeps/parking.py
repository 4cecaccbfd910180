"""Waiting polls parked in Redis and released when due, so no worker holds them in memory.

With the Redis transport, a countdown message sits in the memory of the worker that fetched it
until it is due (about 8.7 KB each, Celery issue #5535), and a SIGKILL strands it until the
visibility timeout. Parked instead, a pending job's next poll is only a score in
:data:`tasks.record.jobs.WAIT_KEY`; the job hash already holds the lease and everything the poll
message needs. Every worker runs a releaser (``workers/poll_releaser.py``) that pops the due
ones in one atomic script and publishes their polls with no countdown.

Popping is atomic, so any number of releasers may run: each parked poll is released by exactly
one. A releaser that dies between popping and publishing loses nothing: the job is still in
``tts:due``, and the reconciler re-sends its poll after the recovery grace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from tasks.record.jobs import KEY_PREFIX, PARKED_FIELDS, WAIT_KEY, Job
from tasks.record.states import has_live_poll

log = logging.getLogger(__name__)

# Pop up to ARGV[2] ids due by ARGV[1]; return each with its job's poll fields (false = unset).
_RELEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
redis.call('ZREM', KEYS[1], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  local fields = redis.call('HMGET', ARGV[3] .. id, unpack(ARGV, 4))
  table.insert(fields, 1, id)
  out[i] = fields
end
return out
"""


class Releaser:
    """Pops due parked polls; one per process, shared by its releaser thread."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._release = client.register_script(_RELEASE)

    def pop(self, now: float, *, limit: int) -> tuple[int, list[Job]]:
        """Take up to ``limit`` polls due by ``now`` off the wait set: how many entries it took,
        and the jobs they poll.

        Jobs that ended meanwhile (or expired) are dropped here: their poll has nothing to do.
        They count as taken, so a caller that pops batch after batch stops on a short one.
        """
        rows = self._release(keys=[WAIT_KEY], args=[repr(now), limit, KEY_PREFIX, *PARKED_FIELDS])
        jobs = []
        for job_id, *values in rows:
            job = Job.parked(job_id, values)
            if has_live_poll(job):
                jobs.append(job)
        return len(rows), jobs

    def put_back(self, jobs: list[Job], due_at: float) -> None:
        """Park ``jobs`` again (their publish failed); the next tick retries them."""
        if jobs:
            self._redis.zadd(WAIT_KEY, {job.job_id: due_at for job in jobs})


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
