"""The Procfile under ``honcho start``: a job runs through its worker, Flower (behind basic auth)
shows every task with a short, secret-free argument text, and stopping honcho leaves nothing.

Everything runs on a lane (a database of the private Redis no other test uses), so the
session's other workers never take these tasks and no other test's messages are counted.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tasks import names
from tasks.record.jobs import JobStore
from tests.integration.conftest import API_KEY, ELEVEN, SECRET, wait_until
from tests.support.honcho import HonchoProcess, pids_with_marker
from tests.support.stack import Lane
from workers.embedded_redis import free_port
from workers.receiver import Receiver

pytestmark = pytest.mark.integration

FLOWER_USER = "ops"
FLOWER_PASSWORD = "flower-pw-7f3a"
TOKEN = "tok-9c1e5b7d2a"  # what a receiver puts in its notify_url query string
LONG_TAIL = "END-OF-A-LONG-TEXT"


class Flower:
    """Flower's HTTP API on loopback; every body it answered is kept for the secret scan."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.answers: list[tuple[str, str]] = []

    def get(
        self, path: str, *, auth: tuple[str, str] | None = None, data: bytes | None = None
    ) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, data=data)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, body = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode(errors="replace")
        self.answers.append((path, body))
        return status, body

    def api(self, path: str) -> Any:
        status, body = self.get(path, auth=(FLOWER_USER, FLOWER_PASSWORD))
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


class Run:
    def __init__(self, honcho: HonchoProcess, flower: Flower, caller: Celery, store: JobStore):
        self.honcho = honcho
        self.flower = flower
        self.caller = caller
        self.store = store
        self.redis = redis.Redis.from_url(caller.conf.broker_url, decode_responses=True)

    def send(self, name: str, *args: Any, **options: Any) -> str:
        kwargs = options.pop("kwargs", {})
        result = self.caller.send_task(
            name, args=list(args), kwargs=kwargs, queue=names.QUEUES[name], **options
        )
        return str(result.id)


@pytest.fixture(scope="module")
def run(
    lanes: Callable[[], Lane],
    worker_env: dict[str, str],
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    logs = tmp_path_factory.mktemp("honcho")
    broker_url = lanes().url
    port = free_port()
    env = {
        **worker_env,
        "CELERY_BROKER_URL": broker_url,
        "TTS_REDIS_URL": broker_url,
        "TTS_WORKER_CONCURRENCY": "2",
        "TTS_BEAT_SCHEDULE": str(logs / "beat-schedule"),
        "FLOWER_PORT": str(port),
        "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
    }
    honcho = HonchoProcess(env, logs / "honcho.log").start()
    caller = Celery("caller", broker=broker_url)
    caller.conf.task_serializer = "json"
    try:
        honcho.wait_for_output(" ready.")
        honcho.wait_for_output("beat: Starting...")
        flower = Flower(port)
        wait_until(lambda: _ok(flower, "/healthcheck"), timeout_s=30)
        # Flower has heard the worker's heartbeat: its events now reach Flower.
        wait_until(lambda: 'flower_worker_online{worker="' in _metrics(flower), timeout_s=30)
        store = JobStore(redis.Redis.from_url(broker_url, decode_responses=True), ttl_s=600)
        yield Run(honcho, flower, caller, store)
    finally:
        honcho.stop()
        honcho.kill_leftovers()
        caller.close()


def _ok(flower: Flower, path: str) -> bool:
    try:
        return flower.get(path)[0] == 200
    except OSError:
        return False


def _metrics(flower: Flower) -> str:
    status, body = flower.get("/metrics")
    return body if status == 200 else ""


def _unacked_names(run: Run) -> list[str]:
    """What the Redis transport still holds as delivered and not acked: each task's name."""
    held = []
    for raw in run.redis.hvals("unacked"):
        message = json.loads(raw)[0]
        held.append(str(message.get("headers", {}).get("task")))
    return held


def _job_id() -> str:
    return f"hp-{uuid.uuid4().hex}"


def test_a_job_runs_through_the_procfile_worker(run: Run, receiver: Receiver) -> None:
    jid = _job_id()
    text = "Hello from honcho " + "la " * 100 + LONG_TAIL + " [[sim pending=2 submit_fail=503]]"
    submit_id = run.send(
        names.SUBMIT_TTS,
        text,
        ELEVEN,
        kwargs={"voice": "Rachel", "notify_url": f"{receiver.url}?token={TOKEN}", "job_id": jid},
    )
    delivery = receiver.wait_for(jid)
    assert delivery.verified is True
    assert delivery.json()["type"] == "tts.completed"
    job = wait_until(lambda: (j := run.store.get(jid)) and j.notify_state == "delivered" and j)
    assert job.status == "completed"

    # Flower heard of every step, each under its public name and finished.
    def settled() -> dict[str, Any] | None:
        tasks = run.flower.api("/api/tasks")
        mine = {
            tid: t for tid, t in tasks.items() if tid == submit_id or jid in str(t.get("kwargs"))
        }
        mine.update({tid: t for tid, t in tasks.items() if jid in str(t.get("args"))})
        seen = {t["name"] for t in mine.values()}
        done = all(t["state"] == "SUCCESS" for t in mine.values())
        steps = {names.SUBMIT_TTS, names.POLL_TTS, names.DOWNLOAD_AUDIO, names.NOTIFY}
        return mine if done and seen >= steps else None

    mine = wait_until(settled, timeout_s=20)
    submit = run.flower.api(f"/api/task/info/{submit_id}")
    assert submit["name"] == names.SUBMIT_TTS
    assert submit["state"] == "SUCCESS"
    assert submit["retries"] >= 1  # the simulator refused the first submit with a 503
    assert "Hello from honcho" in submit["args"]
    assert LONG_TAIL not in submit["args"]  # the text is cut short
    assert "notify_url" in submit["kwargs"]
    assert "Rachel" in submit["kwargs"]
    for task in mine.values():
        assert task["args"], task
        assert len(task["args"]) + len(task["kwargs"] or "") <= 500, task
        assert task["worker"].startswith("celery@")


def test_flower_needs_basic_auth_except_metrics_and_healthcheck(run: Run) -> None:
    for path in ("/api/workers", "/api/tasks", "/api/task/info/x", "/", "/tasks"):
        status, _ = run.flower.get(path)
        assert status == 401, path
        status, _ = run.flower.get(path, auth=(FLOWER_USER, "wrong"))
        assert status == 401, path
    # Documented exposure (deploy/README.md): these two answer anyone who reaches the port.
    assert run.flower.get("/healthcheck")[0] == 200
    assert run.flower.get("/metrics")[0] == 200


def test_flower_is_read_only(run: Run) -> None:
    """Logged-in users watch; they cannot send tasks (each submit spends API credit)."""
    body = json.dumps({"args": ["nope"]}).encode()
    status, text = run.flower.get(
        f"/api/task/send-task/{names.NOTIFY}", auth=(FLOWER_USER, FLOWER_PASSWORD), data=body
    )
    assert status == 403
    assert "Read only" in text
    assert run.redis.llen(names.NOTIFY_QUEUE) == 0


def test_flower_worker_view_hides_held_countdown_arguments(run: Run) -> None:
    """A poll held for later is listed by the worker's ``scheduled`` inspect reply."""
    jid = _job_id()
    held = run.send(
        names.POLL_TTS,
        "run-held-by-the-worker",
        ELEVEN,
        kwargs={"job_id": jid, "notify_url": f"https://hooks.example.com/tts?token={TOKEN}"},
        countdown=300,
    )
    workers = wait_until(lambda: run.flower.api("/api/workers?refresh=1"), timeout_s=20)
    name = next(iter(workers))
    assert names.SUBMIT_TTS in workers[name]["registered"]

    def scheduled() -> list[Any] | None:
        info = run.flower.api(f"/api/workers?workername={name}&refresh=1")[name]
        entries = [e for e in info.get("scheduled") or [] if e["request"]["id"] == held]
        return entries or None

    entry = wait_until(scheduled, timeout_s=20)[0]
    assert "run-held-by-the-worker" in str(entry["request"]["args"])
    assert "https://hooks.example.com/…" in str(entry["request"]["kwargs"])
    info = run.flower.api(f"/api/task/info/{held}")
    assert info["name"] == names.POLL_TTS
    assert info["state"] == "RECEIVED"


def test_no_secret_in_anything_flower_answered(run: Run) -> None:
    run.flower.api("/api/tasks")
    run.flower.api("/api/workers?refresh=1")
    assert len(run.flower.answers) > 10
    # The scan does see argument text (else it could not fail).
    assert any("hooks.example.com" in body for _, body in run.flower.answers)
    secrets = (API_KEY, SECRET, SECRET.removeprefix("whsec_"), TOKEN, FLOWER_PASSWORD)
    leaks = [(path, s) for path, body in run.flower.answers for s in secrets if s in body]
    assert leaks == []


def test_stopping_honcho_drains_and_leaves_nothing_running(run: Run, tmp_path: Path) -> None:
    pids = pids_with_marker(run.honcho.run_id)
    assert len(pids) >= 5  # honcho's children: three shells/programs, pool processes, ...
    assert run.redis.llen(names.POLL_QUEUE) == 0  # the countdown poll is held by the worker

    assert run.honcho.stop() is not None
    output = run.honcho.output
    assert "SIGKILL" not in output  # every process stopped within honcho's 5 s
    for process in ("worker", "beat", "flower"):
        assert f"{process}.1 stopped" in output
    # Nothing of this run is left, and the held poll went back to its queue.
    assert wait_until(lambda: not pids_with_marker(run.honcho.run_id), timeout_s=5)
    assert run.redis.llen(names.POLL_QUEUE) == 1
    assert run.redis.hlen("unacked") == 0, _unacked_names(run)
