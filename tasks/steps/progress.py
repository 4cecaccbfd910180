"""Progress a caller can follow: one short Redis stream per job, one entry per change.

The stream ``tts:progress:<job_id>`` gets an entry (``XADD``, trimmed to about
:data:`MAX_ENTRIES`) each time the job's status changes, and on each poll's answer while it is
pending. Its fields, all text:

* ``status``: the job's status (:class:`tasks.record.states.Status`);
* ``queue_position``: NanoGPT's place in line from the last answer, omitted when unknown;
* ``eta_s``: seconds until NanoGPT is estimated to start generating, from the schedule's own
  queue-speed estimate (:meth:`tasks.pacing.schedule.Progress.seconds_per_place`); omitted when
  unknown, and at the head of the queue (it is generating);
* ``at``: when it was published (epoch seconds).

The stream lives as long as the job record (its TTL, at least ``TTS_JOB_TTL``), so a watcher
that arrives after the job ended still reads its final entry. Entries cost no NanoGPT call: they
repeat what the step has just recorded. Publishing is a notification, not state: a Redis error
while publishing is logged and counted (``tts_progress_dropped``) and the step goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import redis

from tasks import metrics
from tasks.pacing import schedule
from tasks.record.jobs import KEY_PREFIX

if TYPE_CHECKING:
    from tasks.steps.context import Ctx

log = logging.getLogger(__name__)

#: The stream of job ``<id>`` is ``STREAM_PREFIX + <id>``.
STREAM_PREFIX = "tts:progress:"
# A job makes a handful of status changes and one entry per poll; the newest fifty cover minutes
# of polls, and a watcher needs only the newest to know where the job stands.
MAX_ENTRIES = 50

# Append, trim approximately (cheap: whole macro-nodes go), and keep the stream at least as long
# as the job record. KEYS: stream, job record; ARGV: [1] the least TTL, [2] MAXLEN, then fields.
_PUBLISH = """
local ttl = redis.call('TTL', KEYS[2])
local least = tonumber(ARGV[1])
if ttl < least then ttl = least end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""


def stream_key(job_id: str) -> str:
    """The Redis key of the job's progress stream."""
    return STREAM_PREFIX + job_id


def queue_eta_s(progress: schedule.Progress) -> float | None:
    """Seconds until the job reaches the head of NanoGPT's queue, at the speed the schedule
    measured (the prior until the queue moved); None at the head or when no place is known."""
    if not progress.queue_position or progress.queue_position <= 0:
        return None
    return progress.queue_position * progress.seconds_per_place()


def publish(
    ctx: Ctx,
    job_id: str,
    status: str,
    *,
    queue_position: int | None = None,
    eta_s: float | None = None,
) -> bool:
    """Append one entry to the job's stream; False (logged, counted) if Redis refused it."""
    fields = ["status", str(status)]
    if queue_position is not None:
        fields += ["queue_position", str(queue_position)]
    if eta_s is not None:
        fields += ["eta_s", repr(round(eta_s, 3))]
    fields += ["at", repr(ctx.clock())]
    client = ctx.jobs.redis
    try:
        script = client.register_script(_PUBLISH)
        script(
            keys=[stream_key(job_id), KEY_PREFIX + job_id],
            args=[ctx.settings.job_ttl_s, MAX_ENTRIES, *fields],
        )
    except redis.RedisError as exc:
        log.warning("job %s: progress (%s) not published: %s", job_id, status, exc)
        metrics.progress_dropped()
        return False
    return True
