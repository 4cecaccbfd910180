"""Waiting polls live in Redis, not in a worker: none held in memory, none lost with a worker.

Each pending job's next poll is parked in ``tts:wait``, on every broker (issue 21: the one wait
path; ``TTS_POLL_WAIT``, which could make the Redis transport's worker hold countdown messages,
is gone, and a worker still given it warns and parks anyway). RabbitMQ's case is in
tests/integration/test_rabbitmq.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tasks import names
from tasks.record.jobs import WAIT_KEY
from tests.support.stack import ELEVEN, Lane, Spawn, wait_until
from workers.receiver import Receiver

pytestmark = pytest.mark.integration

JOBS = 10
# Long enough to look while every job waits; the test then waits one interval for the end.
WAIT_ENV = {"TTS_POLL_INTERVAL": "4", "TTS_POLL_MAX_INTERVAL": "4", "TTS_POLL_TIMEOUT": "60"}


def submit(lane: Lane, receiver: Receiver, tag: str) -> list[str]:
    jids = [f"{tag}-{n}-{uuid.uuid4().hex[:10]}" for n in range(JOBS)]
    for jid in jids:
        text = f"Wait {jid} [[sim pending=1 queue=0]]"
        lane.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    return jids


def held_by_workers(lane: Lane) -> list[dict[str, Any]]:
    """The countdown messages the workers hold (``inspect scheduled``): a waiting poll is none."""
    replies: dict[str, Any] = lane.caller.control.inspect(timeout=2).scheduled() or {}
    assert replies, "no worker answered inspect"
    return [entry for entries in replies.values() for entry in entries]


def assert_each_finished_once(lane: Lane, receiver: Receiver, jids: list[str]) -> None:
    wait_until(lambda: all(receiver.for_job(j) for j in jids), timeout_s=40)
    for jid in jids:
        assert len(receiver.for_job(jid)) == 1, jid
        job = lane.store.get(jid)
        assert job is not None
        # One pending answer, one completed: no poll was repeated or skipped.
        assert (job.status, job.notify_state, job.polls) == ("completed", "delivered", 2)


@pytest.mark.parametrize("old_setting", [None, "broker"])
def test_waiting_polls_wait_parked_in_redis(
    lanes: Callable[[], Lane],
    spawn: Spawn,
    receiver: Receiver,
    old_setting: str | None,
) -> None:
    """With ``TTS_POLL_WAIT=broker`` left in a deployment's environment, polls still park (a
    warning says it is ignored): no second way to wait."""
    lane = lanes()
    old = {} if old_setting is None else {"TTS_POLL_WAIT": old_setting}
    worker = spawn(lane.env(**WAIT_ENV, **old), concurrency=2).start()
    redis = lane.store._redis
    jids = submit(lane, receiver, old_setting or "parked")

    # Every job has had its first (pending) answer and waits for its second poll.
    wait_until(lambda: all((j := lane.store.get(jid)) and j.polls == 1 for jid in jids))
    assert set(redis.zrange(WAIT_KEY, 0, -1)) == set(jids)
    assert held_by_workers(lane) == []
    assert redis.llen(names.POLL_QUEUE) == 0
    warned = "TTS_POLL_WAIT is set, but no longer read" in worker.log
    assert warned == (old_setting is not None)

    assert_each_finished_once(lane, receiver, jids)
    assert redis.zcard(WAIT_KEY) == 0


def test_parked_polls_outlive_a_killed_worker(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    lane = lanes()
    # A long grace keeps the reconciler out of it: only the parked polls can finish the jobs.
    env = lane.env(**WAIT_ENV, TTS_RECOVERY_GRACE="600")
    first = spawn(env, concurrency=2).start()
    jids = submit(lane, receiver, "kill")
    wait_until(lambda: lane.store._redis.zcard(WAIT_KEY) == JOBS)

    first.kill()  # SIGKILL, main process and pool: whatever it held in memory is gone
    spawn(env, concurrency=2).start()

    assert_each_finished_once(lane, receiver, jids)
