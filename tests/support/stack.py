"""One real worker process, the NanoGPT simulator and a webhook receiver, shared by the session.

A pytest plugin (``pytest_plugins`` in tests/conftest.py), so tests/integration and tests/examples
share one copy of each fixture, and one worker, rather than each folder starting its own.

The worker runs with short intervals so the suite stays quick; every other setting is the
production default. Callers enqueue through a bare Celery app that knows only the task names.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tasks.names import QUEUES
from tasks.pacing import learning
from tasks.record.jobs import JobStore
from tests.support.worker import WorkerProcess
from workers.embedded_redis import DATABASES, EmbeddedRedis
from workers.receiver import Delivery, Receiver
from workers.simulator import Simulator

API_KEY = "itest-key-d41d8cd98f00"
SECRET = "whsec_" + base64.b64encode(b"integration-test-secret-32bytes!").decode()
ELEVEN = "Elevenlabs-Turbo-V2.5"

WORKER_ENV = {
    "NANOGPT_API_KEY": API_KEY,
    "TTS_WEBHOOK_SECRET": SECRET,
    "TTS_TRUSTED_HOSTS": "127.0.0.1",
    "TTS_TRUSTED_WEBHOOK_HOSTS": "127.0.0.1",
    "TTS_MAX_AUDIO_BYTES": "100000",
    "TTS_POLL_INTERVAL": "0.1",
    "TTS_POLL_MAX_INTERVAL": "0.4",
    "TTS_POLL_TIMEOUT": "8",
    "TTS_WEBHOOK_RETRY_DELAY": "0.2",
    "TTS_WEBHOOK_MAX_RETRY_DELAY": "0.5",
    "TTS_RETRY_BASE_DELAY": "0.1",
    "TTS_RETRY_MAX_DELAY": "0.5",
    "TTS_MAX_RETRIES": "3",
    "TTS_HTTP_CONNECT_TIMEOUT": "1",
    "TTS_HTTP_READ_TIMEOUT": "1",
    "TTS_DOWNLOAD_TIMEOUT": "1.5",
    # The budget's code runs in every test (each call spends a token, waiting ones are granted)
    # but never throttles: these tests poll every 0.1 s against an unlimited simulator, with an
    # 8 s deadline. tests/integration/test_budget.py and the reliability suite run it for real.
    # A burst of 400 keeps the releaser's tick at its 0.2 s (burst / rate / 2), which the
    # timing of these tests (polls per deadline) was written for.
    "TTS_UPSTREAM_RATE": "1000",
    "TTS_UPSTREAM_BURST": "400",
}


class Responder:
    """Webhook answers by path: a list of status codes to give, one per delivery, then 200."""

    def __init__(self) -> None:
        self.plans: dict[str, list[int]] = {}

    def __call__(self, delivery: Delivery) -> int:
        plan = self.plans.get(delivery.path)
        return plan.pop(0) if plan else 200


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    with Simulator(api_key=API_KEY) as sim:
        yield sim


@pytest.fixture(scope="session")
def responder() -> Responder:
    return Responder()


@pytest.fixture(scope="session")
def receiver(responder: Responder) -> Iterator[Receiver]:
    with Receiver(secret=SECRET, respond=responder) as rec:
        yield rec


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def worker_env(
    redis_server: EmbeddedRedis, simulator: Simulator, audio_dir: Path
) -> dict[str, str]:
    return {
        **WORKER_ENV,
        "CELERY_BROKER_URL": redis_server.url,
        "NANOGPT_BASE_URL": simulator.base_url,
        "TTS_AUDIO_DIR": str(audio_dir),
    }


@pytest.fixture(scope="session")
def worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(worker_env, tmp_path_factory.mktemp("logs") / "worker.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def caller(redis_server: EmbeddedRedis) -> Iterator[Celery]:
    """An app that knows nothing of ours: broker URL and task names only."""
    app = Celery("caller", broker=redis_server.url)
    app.conf.task_serializer = "json"
    yield app
    app.close()


@pytest.fixture(scope="session")
def store(redis_server: EmbeddedRedis) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_server.url, decode_responses=True), ttl_s=600)


Send = Callable[..., str]


def forget_learned(url: str) -> None:
    """Delete what workers on the database at ``url`` learned of NanoGPT's speed
    (tasks/pacing/learning.py): a test's polls are aimed from its own jobs, never from what an
    earlier test's taught the fleet."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.delete(*learning.keys(client))
    finally:
        client.close()


@pytest.fixture
def send(caller: Celery, worker: WorkerProcess, redis_server: EmbeddedRedis) -> Send:
    """``send(task_name, *args, **kwargs)``: publish by name to the task's queue, the shared
    worker having forgotten what earlier tests taught it."""
    forget_learned(redis_server.url)

    def _send(name: str, *args: Any, **kwargs: Any) -> str:
        result = caller.send_task(name, args=list(args), kwargs=kwargs, queue=QUEUES[name])
        return str(result.id)

    return _send


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition not met in time")


@dataclass
class Lane:
    """A broker and job store of their own (one Redis database) for tests that run their own
    workers: no other worker takes their messages, and no other test's jobs are counted."""

    url: str
    base_env: dict[str, str]
    caller: Celery = field(init=False)
    store: JobStore = field(init=False)

    def __post_init__(self) -> None:
        self.caller = Celery("lane-caller", broker=self.url)
        self.caller.conf.task_serializer = "json"
        self.store = JobStore(redis.Redis.from_url(self.url, decode_responses=True), ttl_s=600)

    def env(self, **overrides: str) -> dict[str, str]:
        """The worker environment on this lane's database, with ``overrides``."""
        return {**self.base_env, "CELERY_BROKER_URL": self.url, **overrides}

    def send(self, name: str, *args: Any, **kwargs: Any) -> str:
        result = self.caller.send_task(name, args=list(args), kwargs=kwargs, queue=QUEUES[name])
        return str(result.id)

    def close(self) -> None:
        self.caller.close()


@pytest.fixture(scope="session")
def lanes(redis_server: EmbeddedRedis, worker_env: dict[str, str]) -> Iterator[Callable[[], Lane]]:
    """``lanes()`` opens a :class:`Lane` on the next unused database (1, 2, ...; 0 is shared).

    The only way a test takes a database of the session's Redis other than 0: a test that
    named a number of its own shared it with whichever lane got that number first (a lane's
    killed worker left its unacked messages in test_procfile's database 1)."""
    numbers = itertools.count(1)
    opened: list[Lane] = []

    def _open() -> Lane:
        number = next(numbers)
        if number >= DATABASES:
            raise RuntimeError(f"more than {DATABASES - 1} lanes in one session: raise DATABASES")
        url = f"redis://127.0.0.1:{redis_server.port}/{number}"
        with contextlib.closing(redis.Redis.from_url(url)) as db:
            db.flushdb()
        lane = Lane(url, worker_env)
        forget_learned(lane.url)
        opened.append(lane)
        return lane

    yield _open
    for lane in opened:
        lane.close()


Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(env, **options)``: a worker with its own log and a distinct name; all are stopped
    (warm, then killed) at the end of the test."""
    started: list[WorkerProcess] = []

    def _spawn(env: dict[str, str], **options: Any) -> WorkerProcess:
        n = len(started)
        proc = WorkerProcess(
            env,
            tmp_path / f"worker{n}.log",
            name=f"scale{n}-{uuid.uuid4().hex[:6]}@%h",
            **options,
        )
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        proc.stop()
        proc.kill()


def webhooks_per_job(receiver: Receiver, jids: set[str]) -> collections.Counter[str]:
    """Accepted webhooks per job, for the jobs in ``jids`` only."""
    counts: collections.Counter[str] = collections.Counter()
    for delivery in receiver.accepted():
        jid = delivery.json().get("job_id")
        if jid in jids:
            counts[jid] += 1
    return counts
