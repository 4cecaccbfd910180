"""The contract from both sides: the client's constants, versions and RabbitMQ declarations
are the worker's own (tasks/, workers/), read from the worker's code here, never copied."""

from __future__ import annotations

import ast
import hashlib
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tasks import names
from tasks.config.celery_config import task_queues
from tasks.config.settings import Settings
from tasks.record import jobs, states
from tasks.webhooks import delivery as webhooks
from tts_client import __version__, contract
from tts_client.client import celery_app

ROOT = Path(__file__).resolve().parents[2]


def version_of(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def test_client_and_worker_share_one_version() -> None:
    worker = version_of(ROOT / "pyproject.toml")
    assert version_of(ROOT / "client" / "pyproject.toml") == worker
    assert __version__ == worker


def test_task_names_and_queues_are_the_workers() -> None:
    assert (contract.SUBMIT_TTS, contract.POLL_TTS, contract.CANCEL) == (
        names.SUBMIT_TTS,
        names.POLL_TTS,
        names.CANCEL,
    )
    assert {task: names.QUEUES[task] for task in contract.QUEUES} == contract.QUEUES
    assert (contract.SUBMIT_QUEUE, contract.POLL_QUEUE) == (names.SUBMIT_QUEUE, names.POLL_QUEUE)


def test_keys_statuses_and_answers_are_the_workers() -> None:
    assert contract.JOB_KEY_PREFIX == jobs.KEY_PREFIX
    assert tuple(status.value for status in states.Status) == contract.STATUSES
    assert {status.value for status in states.FINAL} == contract.ENDED
    assert contract.CANCELLED == states.CANCELLED
    assert contract.UNKNOWN_JOB == states.UNKNOWN_JOB
    assert contract.already_ended("completed") == states.already_ended("completed")
    assert tuple(p.value for p in jobs.Priority) == contract.PRIORITIES
    assert jobs.Job(job_id="j", status="polling").priority == contract.NORMAL


def test_webhook_ids_are_the_workers() -> None:
    assert contract.webhook_id("abc") == webhooks.message_id("job-1", "abc")
    fallback = "msg_" + hashlib.sha256(b"job-1").hexdigest()[:32]
    assert webhooks.message_id("job-1", None) == fallback


def test_on_rabbitmq_the_client_declares_its_queues_as_the_worker_does() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672//"
    worker = Settings(CELERY_BROKER_URL=url, TTS_REDIS_URL="redis://127.0.0.1:6379/0")  # type: ignore[call-arg]
    theirs = {q.name: q for q in task_queues(worker)}
    app = celery_app(url)
    ours = {q.name: q for q in app.conf.task_queues}
    assert set(ours) == set(contract.QUEUES.values())
    for name, queue in ours.items():
        assert queue.exchange.name == theirs[name].exchange.name == contract.AMQP_EXCHANGE
        assert queue.exchange.type == theirs[name].exchange.type == "topic"
        assert queue.routing_key == theirs[name].routing_key == name
        assert queue.queue_arguments == theirs[name].queue_arguments
        assert queue.durable
        assert theirs[name].durable
    app.close()


def test_on_redis_the_client_declares_nothing_special() -> None:
    app = celery_app("redis://127.0.0.1:6379/0")
    assert app.conf.task_queues is None
    assert app.conf.task_serializer == "json"
    app.close()


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_client_imports_no_worker_code() -> None:
    sources = sorted((ROOT / "client" / "src" / "tts_client").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        assert not imported_roots(path) & {"tasks", "workers"}, path


def test_the_client_depends_on_four_packages_in_the_workers_ranges() -> None:
    def requirements(pyproject: Path) -> dict[str, Requirement]:
        lines = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        return {(r := Requirement(line)).name: r for line in lines}

    ours = requirements(ROOT / "client" / "pyproject.toml")
    theirs = requirements(ROOT / "pyproject.toml")
    assert set(ours) == {"celery", "kombu", "redis", "standardwebhooks"}
    for name, requirement in ours.items():
        # The worker's celery carries the [redis] extra; the client's Redis is its own "redis".
        assert requirement.specifier == theirs[name].specifier, name
    extras = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert set(extras["optional-dependencies"]) == {"django", "flask"}
