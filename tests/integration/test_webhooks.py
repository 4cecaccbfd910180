"""Webhooks against a real worker: a hostile reply cannot blow up its memory, and a job id used
again after its record expired gets a webhook-id of its own."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from tasks import names
from tasks.record.jobs import KEY_PREFIX
from tasks.record.states import NotifyState
from tests.reliability.test_promise import assert_runs_this_tree
from tests.support.gzip_bomb import MIB, BombReceiver
from tests.support.stack import ELEVEN, Lane, Send, Spawn, wait_until
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver

pytestmark = pytest.mark.integration

# The bar: a 200 MB gzip reply may grow the worker by less than this.
MAX_GROWTH_BYTES = 100 * MIB


def peak_rss(pid: int) -> int:
    """The process's resident high-water mark (``VmHWM``), in bytes: catches a spike that was
    freed again before anyone sampled ``rss``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def run_job(lane: Lane, jid: str, notify_url: str) -> None:
    lane.send(
        names.SUBMIT_TTS, f"Hook {jid} [[sim pending=1]]", ELEVEN, notify_url=notify_url, job_id=jid
    )

    def settled() -> bool:
        job = lane.store.get(jid)
        return job is not None and job.notify_state not in (None, NotifyState.QUEUED)

    wait_until(settled, timeout_s=30)


def test_gzip_bomb_reply_grows_the_worker_little_and_counts_as_delivered(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    lane = lanes()
    worker = spawn(lane.env(), concurrency=1).start()
    assert_runs_this_tree(worker)
    assert worker.pid is not None
    # A first job through an honest receiver: the pool process has imported and connected
    # everything before it is measured.
    run_job(lane, f"warm-{uuid.uuid4().hex}", receiver.url)
    [child] = psutil.Process(worker.pid).children()
    before = child.memory_info().rss

    with BombReceiver() as bomb:
        jid = f"bomb-{uuid.uuid4().hex}"
        run_job(lane, jid, f"{bomb.url}/{jid}")
        posts = [headers for path, headers in bomb.posts if path.endswith(jid)]

    assert child.is_running()  # the same process did it
    assert psutil.Process(worker.pid).children() == [child]
    growth = peak_rss(child.pid) - before
    assert growth < MAX_GROWTH_BYTES, f"worker grew {growth / MIB:.0f} MiB"
    job = lane.store.get(jid)
    assert job is not None
    assert (job.notify_state, job.notify_attempts) == (NotifyState.DELIVERED, 1)
    assert len(posts) == 1
    assert posts[0]["accept-encoding"] == "identity"


def test_reused_job_id_gets_a_new_webhook_id(
    send: Send, receiver: Receiver, redis_server: EmbeddedRedis
) -> None:
    jid = f"reuse-{uuid.uuid4().hex}"
    text = "Said twice [[sim pending=1]]"
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    first = receiver.wait_for(jid)
    # The record's TTL running out, at once.
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.delete(KEY_PREFIX + jid) == 1
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    wait_until(lambda: len([d for d in receiver.for_job(jid) if d.answered == 200]) == 2)

    second = [d for d in receiver.for_job(jid) if d.answered == 200][1]
    assert first.verified
    assert second.verified
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
