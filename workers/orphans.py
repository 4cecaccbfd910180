"""Messages a worker took from the Redis transport and died before recording.

A worker records the job of a caller's message as it receives it (:mod:`tasks.adapters.received`),
so a worker SIGKILLed while holding prefetched messages loses nothing: the record's watch re-sends
the step. But kombu's Redis transport puts the message in its ``unacked`` hash (and the
``unacked_index`` sorted set, scored by when it was taken) a moment *before* the worker records
it; a SIGKILL in between leaves a message no record knows of, which kombu gives back only after
the visibility timeout (an hour). Seen in CI: one job of 200 with no outcome in the fault row
that SIGKILLs a worker holding unstarted submits.

So the reconciler's thread (workers/reconciler.py, one worker at a time) looks at each entry of
the ``unacked`` index once, as it grows older than :data:`AGE_S`: for a message of ours, it does
what the receiving worker should have done (:func:`tasks.adapters.received.on_received`), which
finds the record when it exists (almost always: the worker that holds it is alive and recorded
it long ago) and makes it when not. A cursor in Redis (:data:`CURSOR_KEY`, the index's score up
to which entries were looked at) makes each entry cost one look, whatever the worker count.

The same look records a job whose record the job store refused when its message was received
(the store down, or Redis as broker and store SIGKILLed at that instant) once the store answers:
the cursor moves only past entries looked at without a store error.

Messages of other apps sharing the broker are read, never touched. Left for kombu: a SIGKILL
between its ``BRPOP`` and its ``unacked`` write (no Redis round trip apart) loses the message
outright; the Redis transport has no atomic move to close that gap.
"""

from __future__ import annotations

import base64
import functools
import logging
from typing import Any, cast

import redis
from kombu.transport.redis import Channel
from kombu.utils import json

from tasks import names
from tasks.adapters import acks, received
from tasks.adapters import runtime as rt
from tasks.config.settings import get_settings
from tasks.steps.context import Ctx

log = logging.getLogger(__name__)

CURSOR_KEY = "tts:orphans:examined"
# An entry is looked at once it is this old: the worker that took it records it within
# milliseconds, so by then almost every one has its record already (looking is harmless anyway).
AGE_S = 2.0
# Entries looked at per tick: bounds one tick's work; the rest wait for the next tick.
LIMIT = 1_000


@functools.cache
def broker_client() -> redis.Redis:
    """A client of the Redis broker: the job store's own when they are one server and database."""
    s = get_settings()
    if s.broker_url == s.redis_url:
        return rt.redis_client()
    return redis.Redis.from_url(
        s.broker_url,
        decode_responses=True,
        socket_timeout=rt.REDIS_TIMEOUT_S,
        socket_connect_timeout=rt.REDIS_TIMEOUT_S,
        retry=rt.no_resend(),
    )


def keys(transport_options: dict[str, Any]) -> tuple[str, str]:
    """kombu's ``unacked`` hash and index keys under these transport options."""
    prefix = transport_options.get("global_keyprefix", "")
    return (
        prefix + transport_options.get("unacked_key", Channel.unacked_key),
        prefix + transport_options.get("unacked_index_key", Channel.unacked_index_key),
    )


def parse(entry: str | bytes) -> tuple[str, str, Any, Any, float | None] | None:
    """(task name, task id, args, kwargs, ETA in epoch seconds) of an ``unacked`` entry holding a
    task message of ours, or None (another app's, or not a Celery protocol-2 JSON message)."""
    message, _exchange, _routing_key = json.loads(entry)
    headers = message.get("headers") or {}
    name, task_id = headers.get("task"), headers.get("id")
    if name not in names.QUEUES or not task_id:
        return None
    if message.get("content-type") != "application/json":
        return None  # we accept JSON only (tasks/config/celery_config.py); so does Celery's worker
    body = message["body"]
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    return name, task_id, args, kwargs, received.eta_s(headers.get("eta"))


def sweep(
    ctx: Ctx,
    broker: redis.Redis,
    transport_options: dict[str, Any],
    *,
    now: float,
) -> int:
    """Record the job of every message of ours taken since the last sweep and held past
    :data:`AGE_S`; returns how many of ours were looked at. A job-store error propagates before
    the cursor moves, so the next tick looks again."""
    unacked_key, index_key = keys(transport_options)
    cursor = float(cast(str | None, broker.get(CURSOR_KEY)) or 0)
    tags = cast(
        list[tuple[str, float]],
        broker.zrangebyscore(index_key, cursor, now - AGE_S, start=0, num=LIMIT, withscores=True),
    )
    if not tags:
        broker.set(CURSOR_KEY, now - AGE_S)
        return 0
    entries = broker.hmget(unacked_key, [tag for tag, _ in tags])
    ours = 0
    for entry in entries:
        if entry is None:
            continue  # acknowledged (or given back) since the index was read
        try:
            task = parse(entry)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("orphans: an unacked entry that is not a task message was left alone")
            continue
        if task is None:
            continue
        name, task_id, args, kwargs, start_at = task
        ours += 1
        try:
            received.on_received(ctx, name, task_id, args, kwargs, start_at=start_at)
        except Exception as exc:
            if acks.store_unavailable(exc):
                raise
            log.exception("orphans: recording %s %s failed", name, task_id)
    # Inclusive: an entry scored exactly at the cursor is looked at again, never skipped.
    broker.set(CURSOR_KEY, tags[-1][1] if len(tags) == LIMIT else now - AGE_S)
    return ours
