"""Cancel and cost through a real worker, the simulator and a receiver: ``tts.cancel`` sent by
name ends a pending job once and its polls stop; a finished job's webhook says what it cost,
and a cancel sent afterwards changes nothing; ``tts-worker cancel`` says which it was."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks import names
from tasks.record.jobs import Job, JobStore
from tests.integration.conftest import ELEVEN, Send, wait_until
from tests.support.cli import invoke
from tests.support.stack import Lane, Spawn
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver
from workers.simulator import Simulator
from workers.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# A poll in flight when the cancel lands may still reach NanoGPT; one started after it may not.
# Polls run every 0.1-0.4 s here, so 2 s of silence is five or more polls that did not happen.
QUIET_AFTER_S = 2.0
# Celery logs "received" just before it sends task_received (celery/worker/strategy.py), whose
# handler records the job in milliseconds: a second after the line, it has run if it will.
RECEIPT_HANDLED_S = 1.0


def job_id() -> str:
    return f"it-cancel-{uuid.uuid4().hex}"


def delivered(store: JobStore, jid: str) -> Job | None:
    job = store.get(jid)
    return job if job is not None and job.notify_state == "delivered" else None


def task_result(worker: WorkerProcess, task_id: str) -> str:
    """What the worker logged as the task's return value (Celery logs it at INFO)."""
    pattern = re.compile(rf"Task {names.CANCEL}\[{task_id}\] succeeded in \S+: (.*)")
    match = wait_until(lambda: pattern.search(worker.log), timeout_s=10)
    return str(match.group(1))


def test_worker_runs_this_tree(worker: WorkerProcess) -> None:
    assert worker.pid is not None
    assert Path(f"/proc/{worker.pid}/cwd").resolve() == ROOT


def test_cancel_ends_a_pending_job_once_and_its_polls_stop(
    send: Send,
    receiver: Receiver,
    simulator: Simulator,
    store: JobStore,
    worker: WorkerProcess,
) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        "Never mind [[sim pending=1000]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    job = wait_until(lambda: (j := store.get(jid)) and j.polls >= 2 and j)
    assert job.status == "polling"

    task_id = send(names.CANCEL, jid)
    delivery = receiver.wait_for(jid)
    time.sleep(QUIET_AFTER_S + 1.0)

    body = delivery.json()
    assert body["type"] == "tts.failed"
    assert body["error"]["code"] == "CANCELLED"
    assert (body["cost"], body["payment_source"]) == (0.05, "USD")  # the simulator's default
    assert len(receiver.for_job(jid)) == 1
    assert task_result(worker, task_id) == "'cancelled'"
    polls = simulator.status_polls(str(job.run_id))
    assert len(polls) >= 2
    late = [p.at - delivery.at for p in polls if p.at > delivery.at + QUIET_AFTER_S]
    assert late == []
    ended = wait_until(lambda: delivered(store, jid))
    assert ended.status == "failed"
    assert ended.outcome == {"type": "tts.failed", "error": body["error"]}


def test_a_cancel_sent_before_its_submit_ends_the_job_with_no_post(
    send: Send,
    receiver: Receiver,
    simulator: Simulator,
    store: JobStore,
    worker: WorkerProcess,
) -> None:
    """The app cancels a job whose submit no worker has received yet (it waits behind a
    backlog): the worker answers ``unknown job`` and remembers it; the submit, when it comes,
    ends CANCELLED with its one webhook, and its text never reaches NanoGPT."""
    jid = job_id()
    text = f"Cancelled before it began {jid} [[sim pending=1]]"
    task_id = send(names.CANCEL, jid)
    assert task_result(worker, task_id) == "'unknown job'"

    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.failed"
    assert body["error"]["code"] == "CANCELLED"
    ended = wait_until(lambda: delivered(store, jid))
    assert ended.status == "failed"
    time.sleep(RECEIPT_HANDLED_S)
    assert len(receiver.for_job(jid)) == 1
    posts = [r for r in simulator.requests if r.method == "POST" and jid in str(r.body)]
    assert posts == []


def test_completed_job_says_what_it_cost_and_a_late_cancel_changes_nothing(
    send: Send, receiver: Receiver, store: JobStore, worker: WorkerProcess
) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        "Priced [[sim pending=1 cost=0.0006 payment_source=USD]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert (body["cost"], body["payment_source"], body["currency"]) == (0.0006, "USD", None)
    before = wait_until(lambda: delivered(store, jid))
    assert (before.cost, before.payment_source) == (0.0006, "USD")

    task_id = send(names.CANCEL, jid)
    assert task_result(worker, task_id) == "'already ended: completed'"
    assert store.get(jid) == before
    assert len(receiver.for_job(jid)) == 1


@pytest.mark.parametrize(
    ("mode", "cost", "currency"), [("sync_json", 0.0012, "USD"), ("sync_bytes", None, None)]
)
def test_synchronous_answers_say_what_they_cost(
    mode: str,
    cost: float | None,
    currency: str | None,
    send: Send,
    receiver: Receiver,
    store: JobStore,
) -> None:
    """A 200 JSON answer states its cost and currency; audio bytes state nothing (null)."""
    jid = job_id()
    text = f"Sync [[sim mode={mode} cost=0.0012]]"
    send(names.SUBMIT_TTS, text, "tts-1", notify_url=receiver.url, job_id=jid)
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert (body["cost"], body["payment_source"], body["currency"]) == (cost, None, currency)
    job = wait_until(lambda: delivered(store, jid))
    assert (job.public()["cost"], job.public()["currency"]) == (cost, currency)


def test_cli_cancel_says_what_it_did(
    send: Send, redis_server: EmbeddedRedis, store: JobStore, worker: WorkerProcess
) -> None:
    env = {"CELERY_BROKER_URL": redis_server.url}
    jid = job_id()
    send(names.SUBMIT_TTS, "Stop [[sim pending=1000]]", ELEVEN, job_id=jid)
    wait_until(lambda: (j := store.get(jid)) and j.polls >= 1)

    first = invoke(["cancel", jid], env)
    again = invoke(["cancel", jid], env)
    unknown = invoke(["cancel", job_id()], env)

    assert (first.exit_code, first.stdout) == (0, "cancelled\n"), first.output
    assert (again.exit_code, again.stdout) == (0, "already ended: failed\n"), again.output
    assert (unknown.exit_code, unknown.stdout) == (1, "unknown job\n"), unknown.output
    job = store.get(jid)
    assert job is not None
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "CANCELLED"


def test_a_cancel_held_by_a_killed_worker_has_already_ended_the_job(
    lanes: Callable[[], Lane], spawn: Spawn, simulator: Simulator, receiver: Receiver
) -> None:
    """The worker holds the cancel unrun (its one pool process is busy) and is SIGKILLed: the
    job ended when the cancel was received, and the next worker sends its webhook and never
    POSTs its text. Before, the cancel sat in the dead worker's unacked messages for the
    visibility timeout (an hour) and the job went on."""
    lane = lanes()
    # The webhook message the cancel queued may be held by the dying worker too: the
    # reconciler re-sends it once overdue (grace + one HTTP call: 15 s here).
    env = lane.env(TTS_HTTP_READ_TIMEOUT="12", TTS_RECOVERY_GRACE="2", TTS_RECONCILE_INTERVAL="0.5")
    first = spawn(env, concurrency=1).start()
    busy = job_id()
    lane.send(names.SUBMIT_TTS, "Busy [[sim pending=1 submit_fail=slow:10]]", ELEVEN, job_id=busy)
    wait_until(lambda: (j := lane.store.get(busy)) and j.status == "posting")
    jid = job_id()
    text = f"Never sent {jid} [[sim pending=1000]]"
    lane.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    cancel_id = lane.send(names.CANCEL, jid)
    wait_until(lambda: f"Task {names.CANCEL}[{cancel_id}] received" in first.log)
    time.sleep(RECEIPT_HANDLED_S)
    first.kill()
    assert f"Task {names.CANCEL}[{cancel_id}] succeeded" not in first.log  # held, never run

    job = lane.store.get(jid)
    assert job is not None
    assert job.outcome is not None, job.status
    assert job.outcome["error"]["code"] == "CANCELLED"
    spawn(env, concurrency=1).start()
    body = receiver.wait_for(jid, timeout_s=45).json()
    assert (body["type"], body["error"]["code"]) == ("tts.failed", "CANCELLED")
    posted = [r for r in simulator.requests if r.method == "POST" and jid in str(r.body)]
    assert posted == []
