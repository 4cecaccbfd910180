"""A TTS worker on a broker shared with an app's own Celery loses none of the app's tasks.

The app and its worker use Celery's defaults (the default queue ``celery``, as a Django project
does); the TTS worker runs at its defaults beside it, on the same Redis database. Then the
opt-in (TTS_CONSUME_DEFAULT_QUEUE, for a broker of our own): a foreign task that reaches the TTS
worker goes back to the broker (workers/consumer.py), and runs once its own worker is up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery

from tasks import names
from tests.support import foreign_app
from tests.support.stack import Lane, Spawn, wait_until
from tests.support.worker import WorkerProcess, assert_runs_this_tree

pytestmark = pytest.mark.integration

UNREGISTERED = "Received unregistered task"
# After the last task ran, how long a duplicate would have to show up.
DUPLICATE_WINDOW_S = 1.0


@pytest.fixture
def lane(lanes: Callable[[], Lane]) -> Lane:
    return lanes()


@pytest.fixture
def client(lane: Lane) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(lane.url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def app(lane: Lane) -> Iterator[Celery]:
    with contextlib.closing(foreign_app.make_app(lane.url)) as a:
        yield a


def app_worker(spawn: Spawn, lane: Lane) -> WorkerProcess:
    """The app's own worker: its app, Celery's defaults, the lane's broker."""
    return spawn({"CELERY_BROKER_URL": lane.url}, app="tests.support.foreign_app").start()


def send(app: Celery, n: int, *, first: int = 0) -> set[str]:
    task = app.tasks[foreign_app.RECORD]
    for i in range(first, first + n):
        task.delay(i)
    return {str(i) for i in range(first, first + n)}


def runs(client: redis.Redis) -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall(foreign_app.RUNS).items()}  # type: ignore[union-attr]


def ran_once(client: redis.Redis, sent: set[str]) -> None:
    """Every task sent ran, and (given a moment for a duplicate to show) exactly once."""
    wait_until(lambda: set(runs(client)) >= sent, timeout_s=60)
    time.sleep(DUPLICATE_WINDOW_S)
    seen = runs(client)
    assert {k: seen[k] for k in sent} == dict.fromkeys(sent, 1)


def waiting(client: redis.Redis) -> int:
    """Tasks in the `celery` queue, plus any a worker holds unacknowledged from it."""
    held = sum(
        1 for raw in client.hvals("unacked") if f'"{names.CELERY_DEFAULT_QUEUE}"]' in str(raw)
    )
    return int(client.llen(names.CELERY_DEFAULT_QUEUE)) + held  # type: ignore[arg-type]


def test_beside_a_tts_worker_at_its_defaults_every_app_task_runs_once(
    lane: Lane, spawn: Spawn, app: Celery, client: redis.Redis
) -> None:
    tts = spawn(lane.env()).start()
    assert_runs_this_tree(tts)
    app_worker(spawn, lane)
    sent = send(app, 50)
    ran_once(client, sent)
    assert UNREGISTERED not in tts.log


def test_with_only_the_tts_worker_up_no_app_task_is_discarded(
    lane: Lane, spawn: Spawn, app: Celery, client: redis.Redis
) -> None:
    tts = spawn(lane.env()).start()
    sent = send(app, 10)
    with contextlib.suppress(TimeoutError):  # a few seconds of a consuming TTS worker
        wait_until(lambda: waiting(client) != 10, timeout_s=3)
    assert waiting(client) == 10
    assert UNREGISTERED not in tts.log
    app_worker(spawn, lane)
    ran_once(client, sent)


def test_opted_in_a_foreign_task_is_handed_back_not_lost(
    lane: Lane, spawn: Spawn, app: Celery, client: redis.Redis
) -> None:
    tts = spawn(lane.env(TTS_CONSUME_DEFAULT_QUEUE="true")).start()
    sent = send(app, 10)
    # The TTS worker takes one (it consumes `celery`), hands it back to the broker, and leaves
    # the queue alone for a while (workers/consumer.py): nothing is lost, nothing spins.
    wait_until(lambda: "is not ours: handed back" in tts.log, timeout_s=30)
    wait_until(lambda: waiting(client) == 10, timeout_s=10)
    time.sleep(2.0)
    assert waiting(client) == 10
    assert tts.log.count("is not ours: handed back") == 1
    assert runs(client) == {}
    assert UNREGISTERED not in tts.log
    # Its own worker then runs each of them, once; and the next 50, with both consuming `celery`.
    app_worker(spawn, lane)
    ran_once(client, sent)
    more = send(app, 50, first=100)
    ran_once(client, more)
