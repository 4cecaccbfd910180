"""What a platform's SIGTERM does to a worker that runs one task and holds one countdown task.

Two deliveries exist in the wild: to the main process only (Kubernetes, Docker, systemd with
``KillMode=mixed``) and to the whole process group, pool children included (honcho, Heroku,
systemd's default ``KillMode=control-group``). deploy/README.md explains which setting goes
with which; these tests are the evidence. Database 2 keeps the session's worker out of it.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tasks import names
from tests.integration.conftest import ELEVEN, wait_until
from tests.support.stack import Lane
from workers.worker_process import STOP_TIMEOUT_S, WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_url(lanes: Callable[[], Lane]) -> Iterator[str]:
    url = lanes().url
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def caller(broker_url: str) -> Iterator[Celery]:
    app = Celery("caller", broker=broker_url)
    app.conf.task_serializer = "json"
    yield app
    app.close()


class Scene:
    """A started worker, a task it is running (a slow submit) and a countdown poll it holds."""

    def __init__(self, worker: WorkerProcess, client: redis.Redis, job_id: str) -> None:
        self.worker = worker
        self.redis = client
        self.job_id = job_id

    def status(self) -> str | None:
        return self.redis.hget(f"tts:job:{self.job_id}", "status")  # type: ignore[return-value]


def start_scene(
    worker_env: dict[str, str],
    broker_url: str,
    caller: Celery,
    log: Path,
    *,
    submit_s: float,
    extra: dict[str, str] | None = None,
) -> Scene:
    env = {
        **worker_env,
        "CELERY_BROKER_URL": broker_url,
        "TTS_REDIS_URL": broker_url,
        "TTS_HTTP_READ_TIMEOUT": str(submit_s + 10),
        **(extra or {}),
    }
    worker = WorkerProcess(env, log, concurrency=2).start()
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    caller.send_task(
        names.POLL_TTS,
        args=["run-held", ELEVEN],
        kwargs={"job_id": f"held-{uuid.uuid4().hex}"},
        queue=names.POLL_QUEUE,
        countdown=600,
    )
    job_id = f"sd-{uuid.uuid4().hex}"
    caller.send_task(
        names.SUBMIT_TTS,
        args=[f"Slow [[sim pending=1 submit_fail=slow:{submit_s}]]", ELEVEN],
        kwargs={"job_id": job_id},
        queue=names.SUBMIT_QUEUE,
    )
    scene = Scene(worker, client, job_id)
    # "posting": the submit claimed the paid POST and is waiting for its slow answer.
    wait_until(lambda: scene.status() == "posting", timeout_s=20)
    # Both messages are now the worker's: taken off their lists, not yet acknowledged.
    wait_until(lambda: client.hlen("unacked") == 2, timeout_s=20)
    assert client.llen(names.POLL_QUEUE) == 0
    return scene


def wait_exit(worker: WorkerProcess) -> int:
    assert worker.process is not None
    try:
        return worker.process.wait(STOP_TIMEOUT_S)
    finally:
        worker.kill()


def test_sigterm_to_the_main_process_finishes_the_task_and_returns_held_ones(
    worker_env: dict[str, str], broker_url: str, caller: Celery, tmp_path: Path
) -> None:
    """Kubernetes, Docker, systemd KillMode=mixed: a warm shutdown."""
    alive = tmp_path / "alive"
    scene = start_scene(
        worker_env,
        broker_url,
        caller,
        tmp_path / "w.log",
        submit_s=2,
        extra={"TTS_LIVENESS_FILE": str(alive)},
    )
    assert alive.exists()  # the liveness file of a consuming worker
    assert scene.worker.process is not None
    scene.worker.process.send_signal(signal.SIGTERM)

    assert wait_exit(scene.worker) == 0
    assert scene.status() == "polling"  # the running submit finished and handed over
    assert scene.redis.hlen("unacked") == 0
    # The held poll is back on its list, beside the first poll the submit queued.
    assert scene.redis.llen(names.POLL_QUEUE) == 2
    assert "Warm shutdown" in scene.worker.log
    assert "WorkerLostError" not in scene.worker.log
    assert not alive.exists()


def test_group_sigterm_without_remap_kills_the_running_task(
    worker_env: dict[str, str], broker_url: str, caller: Celery, tmp_path: Path
) -> None:
    """Why the Procfile remaps SIGTERM: the pool child dies, its task starts over elsewhere."""
    scene = start_scene(worker_env, broker_url, caller, tmp_path / "w.log", submit_s=3)
    os.killpg(scene.worker.process.pid, signal.SIGTERM)  # type: ignore[union-attr]

    wait_exit(scene.worker)
    assert "WorkerLostError" in scene.worker.log
    # Cut off mid-request: the POST's fate is unknown, so its redelivery will not send it again
    # (the job ends as SUBMIT_UNCONFIRMED once the claim runs out).
    assert scene.status() == "posting"
    assert scene.redis.llen(names.SUBMIT_QUEUE) == 1  # re-queued (reject_on_worker_lost)
    assert scene.redis.llen(names.POLL_QUEUE) == 1
    assert scene.redis.hlen("unacked") == 0


def test_group_sigterm_with_remap_lets_a_short_task_finish(
    worker_env: dict[str, str], broker_url: str, caller: Celery, tmp_path: Path
) -> None:
    """Procfile platforms: REMAP_SIGTERM=SIGQUIT turns SIGTERM into a soft shutdown."""
    extra = {"REMAP_SIGTERM": "SIGQUIT", "TTS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "6"}
    scene = start_scene(
        worker_env, broker_url, caller, tmp_path / "w.log", submit_s=1.5, extra=extra
    )
    os.killpg(scene.worker.process.pid, signal.SIGTERM)  # type: ignore[union-attr]

    wait_exit(scene.worker)
    assert "Initiating Soft Shutdown" in scene.worker.log
    assert "WorkerLostError" not in scene.worker.log
    assert scene.status() == "polling"
    assert scene.redis.llen(names.POLL_QUEUE) == 2
    assert scene.redis.hlen("unacked") == 0


def test_soft_shutdown_requeues_a_task_that_outlasts_it(
    worker_env: dict[str, str], broker_url: str, caller: Celery, tmp_path: Path
) -> None:
    extra = {"REMAP_SIGTERM": "SIGQUIT", "TTS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1"}
    scene = start_scene(worker_env, broker_url, caller, tmp_path / "w.log", submit_s=8, extra=extra)
    os.killpg(scene.worker.process.pid, signal.SIGTERM)  # type: ignore[union-attr]

    wait_exit(scene.worker)
    assert "Initiating Soft Shutdown" in scene.worker.log
    assert scene.status() == "posting"  # cancelled mid-POST: never sent again
    assert scene.redis.llen(names.SUBMIT_QUEUE) == 1  # cancelled, back on its list
    assert scene.redis.llen(names.POLL_QUEUE) == 1
    assert scene.redis.hlen("unacked") == 0
