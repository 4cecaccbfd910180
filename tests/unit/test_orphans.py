"""Messages taken from the Redis transport by a worker that died before recording them
(workers/orphans.py), on a real Redis through kombu's own transport: the sweep gives such a
job its record, on the reconciler's watch; looks at each entry once; leaves other apps'
messages alone; and moves nothing while the job store refuses.

A worker dying between kombu's ``unacked`` write and its record is played by taking the
message with ``basic_get`` (which writes ``unacked`` as a worker's consumer does) and dropping
the connection without giving the message back, as a SIGKILL would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection

from tasks import names
from tasks.record.jobs import DUE_KEY, KEY_PREFIX
from tasks.record.states import Status
from tests.support.ctx import make_ctx
from workers import orphans
from workers.embedded_redis import EmbeddedRedis, free_port

MODEL = "Elevenlabs-Turbo-V2.5"
QUEUE = names.QUEUES[names.SUBMIT_TTS]


@pytest.fixture
def options(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """kombu transport options with a key prefix of this test's own; the cursor reset."""
    redis_client.delete(orphans.CURSOR_KEY)
    yield {"global_keyprefix": f"orphans-{uuid.uuid4().hex}:"}
    redis_client.delete(orphans.CURSOR_KEY)


def refusing() -> redis.Redis:
    """A client of a port nothing listens on: every command is refused."""
    return redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)


def taken_and_abandoned(url: str, options: dict[str, str], name: str, *args: object) -> str:
    """Send ``name`` by name, then take it as a worker would and die holding it; its task id."""
    app = Celery(broker=url, broker_transport_options=options)
    task_id = app.send_task(name, args=list(args), queue=QUEUE).id
    with Connection(url, transport_options=options) as conn:
        channel = conn.default_channel
        message = channel.basic_get(QUEUE, no_ack=False)
        assert message is not None
        assert message.headers["id"] == task_id
        channel.qos.restore_at_shutdown = False  # SIGKILLed: nothing given back
    return task_id


def test_a_message_taken_and_never_recorded_gets_its_record_on_the_watch(
    redis_client: redis.Redis, quiet_redis_server: EmbeddedRedis, options: dict[str, str]
) -> None:
    url = quiet_redis_server.url
    task_id = taken_and_abandoned(url, options, names.SUBMIT_TTS, "Hello", MODEL)
    unacked_key, _ = orphans.keys(options)
    assert redis_client.hlen(unacked_key) == 1
    assert not redis_client.exists(KEY_PREFIX + task_id)  # what was lost before

    ctx, _ = make_ctx(redis_client)
    # Too young: the worker that took it may be recording it right now.
    assert orphans.sweep(ctx, redis_client, options, now=time.time()) == 0
    later = time.time() + orphans.AGE_S + 0.1
    assert orphans.sweep(ctx, redis_client, options, now=later) == 1
    assert redis_client.hget(KEY_PREFIX + task_id, "status") == Status.SUBMITTING
    assert redis_client.zscore(DUE_KEY, task_id) is not None  # the reconciler re-sends it

    record = redis_client.hgetall(KEY_PREFIX + task_id)
    assert orphans.sweep(ctx, redis_client, options, now=later + 5) == 0  # looked at once
    assert redis_client.hgetall(KEY_PREFIX + task_id) == record
    assert redis_client.hlen(unacked_key) == 1  # kombu's entry untouched


def test_another_apps_message_is_left_alone(
    redis_client: redis.Redis, quiet_redis_server: EmbeddedRedis, options: dict[str, str]
) -> None:
    url = quiet_redis_server.url
    taken_and_abandoned(url, options, "shop.tasks.send_invoice", 42)
    ctx, _ = make_ctx(redis_client)
    assert orphans.sweep(ctx, redis_client, options, now=time.time() + orphans.AGE_S + 1) == 0
    unacked_key, _ = orphans.keys(options)
    assert redis_client.hlen(unacked_key) == 1


# Also the case a worker met when its Redis (broker and store) was SIGKILLed as it received a
# submit: the record refused, the message left in unacked, the worker gone or reconnected.
def test_nothing_moves_while_the_job_store_refuses(
    redis_client: redis.Redis, quiet_redis_server: EmbeddedRedis, options: dict[str, str]
) -> None:
    url = quiet_redis_server.url
    task_id = taken_and_abandoned(url, options, names.SUBMIT_TTS, "Hello", MODEL)
    later = time.time() + orphans.AGE_S + 1
    down, _ = make_ctx(refusing())
    with pytest.raises(redis.ConnectionError):
        orphans.sweep(down, redis_client, options, now=later)
    assert redis_client.get(orphans.CURSOR_KEY) is None  # the next tick looks again
    up, _ = make_ctx(redis_client)
    assert orphans.sweep(up, redis_client, options, now=later + 1) == 1
    assert redis_client.hget(KEY_PREFIX + task_id, "status") == Status.SUBMITTING
