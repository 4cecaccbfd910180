"""A ``tts.*`` message whose arguments do not fit its task, sent raw to a real worker, ends as
``INVALID_INPUT`` with a ``tts.failed`` webhook (tasks/adapters/misfit.py); one that names no job
id or
notify URL to tell is counted in ``tts_unusable_messages_total`` and logged with its task id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from tasks import names
from tests.integration.test_observability import scrape
from tests.support.stack import Lane, wait_until
from tests.support.worker import WorkerProcess
from workers.receiver import Receiver

pytestmark = pytest.mark.integration

# What the issue promises; it should take seconds.
WEBHOOK_WITHIN_S = 60.0
KOKORO = "Kokoro-82m"


def job_id() -> str:
    return f"it-misfit-{uuid.uuid4().hex}"


def send_raw(caller: Celery, name: str, args: Any, kwargs: dict[str, Any]) -> str:
    """As an app that got the call wrong: by name, to the task's own queue, unchecked."""
    return str(caller.send_task(name, args, kwargs=kwargs, queue=names.QUEUES[name]).id)


def failed_for(receiver: Receiver, jid: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    body = receiver.wait_for(jid, timeout_s=WEBHOOK_WITHIN_S).json()
    return body, time.monotonic() - started


def test_a_misspelled_keyword_ends_in_an_invalid_input_webhook(
    caller: Celery, worker: WorkerProcess, receiver: Receiver
) -> None:
    jid = job_id()
    kwargs = {"voice_id": "x", "job_id": jid, "notify_url": receiver.url}
    send_raw(caller, names.SUBMIT_TTS, ("hi", KOKORO), kwargs)
    body, took_s = failed_for(receiver, jid)
    assert body["type"] == "tts.failed"
    assert body["error"]["code"] == "INVALID_INPUT"
    assert "voice_id" in body["error"]["message"]
    assert took_s < 10  # seconds, not the promise's minute
    time.sleep(0.5)
    assert len(receiver.for_job(jid)) == 1  # one outcome, one webhook (receipt and task)


@pytest.mark.parametrize(
    ("name", "args", "extra", "words"),
    [
        (names.SUBMIT_TTS, ("hi",), {}, "model"),  # too few
        (names.SUBMIT_TTS, ("hi", KOKORO, "Rachel"), {}, "too many positional"),
        (names.SUBMIT_TTS, ("hi", KOKORO), {"speed": "fast"}, "speed"),  # wrong type
        (names.POLL_TTS, ("run-1",), {}, "model"),
        (names.POLL_TTS, ("run-1", KOKORO), {"runid": "x"}, "runid"),
    ],
)
def test_wrong_arity_and_type_end_likewise(
    caller: Celery,
    worker: WorkerProcess,
    receiver: Receiver,
    name: str,
    args: tuple[Any, ...],
    extra: dict[str, Any],
    words: str,
) -> None:
    jid = job_id()
    send_raw(caller, name, args, {"job_id": jid, "notify_url": receiver.url, **extra})
    body, _ = failed_for(receiver, jid)
    assert (body["type"], body["error"]["code"]) == ("tts.failed", "INVALID_INPUT")
    assert words in body["error"]["message"]


def test_a_submit_without_job_id_is_answered_under_its_task_id(
    caller: Celery, worker: WorkerProcess, receiver: Receiver
) -> None:
    tid = send_raw(
        caller, names.SUBMIT_TTS, ("hi", KOKORO), {"voice_id": "x", "notify_url": receiver.url}
    )
    body, _ = failed_for(receiver, tid)
    assert body["error"]["code"] == "INVALID_INPUT"


@pytest.fixture(scope="module")
def metrics_lane(lanes: Callable[[], Lane]) -> Lane:
    return lanes()


@pytest.fixture(scope="module")
def metrics_worker(
    metrics_lane: Lane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        metrics_lane.env(TTS_METRICS_PORT="0"),
        tmp_path_factory.mktemp("misfit") / "worker.log",
        concurrency=2,
    ).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "reason"),
    [
        (names.SUBMIT_TTS, ("hi", KOKORO), {"voice_id": "x"}, "no_notify_url"),
        (
            names.SUBMIT_TTS,
            ("hi",),
            {"job_id": "no spaces allowed", "notify_url": "x"},
            "no_job_id",
        ),
        (names.DOWNLOAD_AUDIO, (), {}, "internal"),
    ],
)
def test_one_that_names_nobody_to_tell_is_counted_and_logged(
    metrics_lane: Lane,
    metrics_worker: WorkerProcess,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    metric = f"tts_unusable_messages_total{{reason={reason}}}"
    before = scrape(metrics_worker).get(metric, 0.0)
    tid = send_raw(metrics_lane.caller, name, args, kwargs)
    wait_until(lambda: scrape(metrics_worker).get(metric, 0.0) == before + 1, timeout_s=30)
    wait_until(lambda: f"message {tid} dropped" in metrics_worker.log, timeout_s=5)
    line = next(x for x in metrics_worker.log.splitlines() if f"message {tid} dropped" in x)
    assert "ERROR" in line
    time.sleep(0.5)
    assert scrape(metrics_worker).get(metric, 0.0) == before + 1  # once, not per check


def test_a_tts_task_name_the_worker_does_not_have_is_counted(
    metrics_lane: Lane, metrics_worker: WorkerProcess
) -> None:
    metric = "tts_unusable_messages_total{reason=unknown_task}"
    before = scrape(metrics_worker).get(metric, 0.0)
    metrics_lane.caller.send_task("tts.sumbit_tts", ("hi", KOKORO), queue=names.SUBMIT_QUEUE)
    wait_until(lambda: scrape(metrics_worker).get(metric, 0.0) == before + 1, timeout_s=30)
    # Counted just before Celery's own handler logs it (at ERROR) and discards it.
    unregistered = "Received unregistered task of type 'tts.sumbit_tts'"
    wait_until(lambda: unregistered in metrics_worker.log, timeout_s=5)
