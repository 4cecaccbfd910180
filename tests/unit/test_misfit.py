"""A message of ours whose arguments do not fit its task (tasks/adapters/misfit.py): rejected
through the
reject path when it names a job and a notify URL, counted and logged otherwise; and the task
class that catches it before Celery's ``TypeError``. Against a real Redis."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from tasks import names, steps
from tasks.adapters import misfit, tts
from tasks.adapters.received import on_received
from tasks.record.jobs import DUE_KEY, KEY_PREFIX
from tests.support.ctx import make_ctx

HOOK = "https://hooks.example.com/tts?token=abc"
MODEL = "Kokoro-82m"


def unusable(reason: str) -> float:
    return REGISTRY.get_sample_value("tts_unusable_messages_total", {"reason": reason}) or 0.0


@pytest.fixture
def tid(redis_client: redis.Redis) -> Iterator[str]:
    task_id = str(uuid.uuid4())
    yield task_id
    redis_client.delete(KEY_PREFIX + task_id)
    redis_client.zrem(DUE_KEY, task_id)


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        (["hi", MODEL], {"voice_id": "x"}, "unexpected keyword argument 'voice_id'"),
        (["hi"], {}, "missing a required argument: 'model'"),
        (["hi", MODEL, "Rachel"], {}, "too many positional arguments"),
        ("hi", {}, "args must be a list, not str"),
        (["hi", MODEL], ["x"], "kwargs must be a mapping, not list"),
        (["hi", MODEL], {"voice": "Rachel"}, None),
    ],
)
def test_problem_names_what_does_not_fit(args: Any, kwargs: Any, words: str | None) -> None:
    found = misfit.problem(steps.submit, args, kwargs, leading=2)
    assert found == words if words is None else words in (found or "")


def test_a_misfit_with_job_and_url_is_rejected_and_announced(
    redis_client: redis.Redis, tid: str
) -> None:
    ctx, outbox = make_ctx(redis_client)
    before = unusable("no_notify_url")
    jid = misfit.reject(
        ctx, names.SUBMIT_TTS, tid, ["hi", MODEL], {"voice_id": "x", "notify_url": HOOK},
        "unexpected keyword argument 'voice_id'", count=True,
    )  # fmt: skip
    assert jid == tid  # a submit without job_id: the task id, as a fitting one would get
    job = ctx.jobs.get(tid)
    assert job is not None
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "INVALID_INPUT"
    assert "voice_id" in job.outcome["error"]["message"]
    assert (job.notify_url, job.notify_state) == (HOOK, "queued")
    assert outbox.names() == [names.NOTIFY]
    assert unusable("no_notify_url") == before  # told by webhook: nothing to count


def test_without_a_notify_url_it_is_recorded_counted_and_logged(
    redis_client: redis.Redis, tid: str, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, _ = make_ctx(redis_client)
    before = unusable("no_notify_url")
    with caplog.at_level(logging.ERROR, logger="tasks.adapters.misfit"):
        jid = misfit.reject(ctx, names.POLL_TTS, tid, ["run"], {}, "missing model", count=True)
    assert jid == tid
    assert ctx.jobs.get(tid) is not None
    assert unusable("no_notify_url") == before + 1
    assert tid in caplog.text


def test_without_a_usable_job_id_it_is_only_counted_and_logged(
    redis_client: redis.Redis, tid: str, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, outbox = make_ctx(redis_client)
    before = unusable("no_job_id")
    kwargs = {"job_id": "bad id with spaces", "notify_url": HOOK, "colour": "blue"}
    with caplog.at_level(logging.ERROR, logger="tasks.adapters.misfit"):
        assert misfit.reject(ctx, names.SUBMIT_TTS, tid, [], kwargs, "r", count=True) is None
    assert unusable("no_job_id") == before + 1
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert tid in caplog.records[0].getMessage()
    assert outbox.sent == []
    assert not redis_client.exists(KEY_PREFIX + tid)


def test_an_internal_step_that_does_not_fit_is_counted_not_recorded(
    redis_client: redis.Redis, tid: str
) -> None:
    ctx, outbox = make_ctx(redis_client)
    before = unusable("internal")
    assert misfit.reject(ctx, names.DOWNLOAD_AUDIO, tid, [], {}, "r", count=True) is None
    assert unusable("internal") == before + 1
    assert outbox.sent == []


def test_at_receipt_a_kwargs_that_is_no_mapping_is_counted_there(
    redis_client: redis.Redis, tid: str
) -> None:
    """Celery's tracer refuses it before the task runs: the receipt is the only place to."""
    ctx, _ = make_ctx(redis_client)
    before = unusable("no_notify_url")
    assert on_received(ctx, names.SUBMIT_TTS, tid, ["hi", MODEL], ["x"]) == tid  # type: ignore[arg-type]
    job = ctx.jobs.get(tid)
    assert job is not None
    assert job.outcome is not None
    assert "kwargs must be a mapping" in job.outcome["error"]["message"]
    assert unusable("no_notify_url") == before + 1


def test_our_tasks_use_the_checking_class() -> None:
    for task in (tts.submit_tts, tts.poll_tts, tts.download_audio, tts.notify, tts.cancel):
        assert isinstance(task, misfit.CheckedTask), task.name
