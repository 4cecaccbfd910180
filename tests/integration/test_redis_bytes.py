"""What one job costs the job store, measured on a real run (README, "Sizing Redis").

``MEMORY USAGE`` of a job's record while it waits to be sent (it holds the caller's text), while
it polls (the text is gone) and once it has ended, for a short text and for the longest one the
API takes; plus one entry of the sorted sets a job in flight sits in. Run with ``-s`` to see the
figures (they are also checked against the README's ranges)::

    PYTHONPATH=. python -m pytest tests/integration/test_redis_bytes.py -s -q
"""

from __future__ import annotations

import uuid

import pytest
import redis
from celery import Celery

from tasks import names
from tasks.names import QUEUES
from tasks.nanogpt.validation import MAX_TEXT_CHARS
from tasks.record.jobs import KEY_PREFIX, JobStore
from tasks.record.states import Status
from tests.integration.conftest import ELEVEN, wait_until
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver
from workers.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

# A sentence of a typical request, and the API's longest text.
SHORT = "Your order has shipped and will arrive on Thursday between 9 and 12. "
DIRECTIVE = " [[sim pending=6 queue=2]]"
# The countdown that keeps a received submit waiting (its record made, its text held).
WAIT_S = 4


def bytes_of(client: redis.Redis, jid: str) -> int:
    return int(client.memory_usage(KEY_PREFIX + jid, samples=0) or 0)


def one_job(
    caller: Celery, client: redis.Redis, store: JobStore, receiver: Receiver, text: str
) -> dict[str, int]:
    jid = f"mem-{uuid.uuid4().hex}"
    caller.send_task(
        names.SUBMIT_TTS,
        args=[text, ELEVEN],
        kwargs={"notify_url": receiver.url, "job_id": jid},
        queue=QUEUES[names.SUBMIT_TTS],
        countdown=WAIT_S,
    )
    wait_until(lambda: (j := store.get(jid)) and j.status == Status.SUBMITTING)
    waiting = bytes_of(client, jid)
    wait_until(lambda: (j := store.get(jid)) and j.status == Status.POLLING, timeout_s=20)
    polling = bytes_of(client, jid)
    receiver.wait_for(jid)
    wait_until(lambda: (j := store.get(jid)) and j.notify_state == "delivered")
    return {"waiting to be sent": waiting, "polling": polling, "ended": bytes_of(client, jid)}


def test_bytes_per_job(
    caller: Celery,
    worker: WorkerProcess,
    redis_server: EmbeddedRedis,
    store: JobStore,
    receiver: Receiver,
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    short = one_job(caller, client, store, receiver, SHORT + DIRECTIVE)
    longest_text = (SHORT * (MAX_TEXT_CHARS // len(SHORT)))[: MAX_TEXT_CHARS - len(DIRECTIVE)]
    longest = one_job(caller, client, store, receiver, longest_text + DIRECTIVE)
    # One entry of tts:due / tts:wait for a job id of this length: 10,000 of them, averaged.
    with EmbeddedRedis() as scratch:
        z = redis.Redis(port=scratch.port)
        z.zadd("z", {f"mem-{uuid.uuid4().hex}": 1.7e9 + i for i in range(10_000)})
        zset_entry = int(z.memory_usage("z", samples=0) or 0) // 10_000
    print(f"\nshort text ({len(SHORT)} chars): {short}")
    print(f"longest text ({MAX_TEXT_CHARS} chars): {longest}")
    print(f"one sorted-set entry: {zset_entry} bytes")
    # The text is dropped once NanoGPT accepted it: polling and ended records are the same
    # size whatever the text was, and small.
    assert longest["waiting to be sent"] > MAX_TEXT_CHARS
    assert abs(longest["polling"] - short["polling"]) < 256
    assert abs(longest["ended"] - short["ended"]) < 256
    assert short["ended"] < 8192
    assert zset_entry < 200
