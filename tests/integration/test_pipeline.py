"""End to end through a real worker: submit -> poll -> download -> signed webhook."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from tasks import names
from tasks.record.jobs import JobStore
from tests.integration.conftest import ELEVEN, Send, wait_until
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration


def job_id() -> str:
    return f"it-{uuid.uuid4().hex}"


def test_async_job_end_to_end(
    send: Send, receiver: Receiver, simulator: Simulator, store: JobStore, audio_dir: Path
) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS,
        "Hello there [[sim pending=3 queue=2]]",
        ELEVEN,
        voice="Rachel",
        notify_url=receiver.url,
        job_id=jid,
    )
    delivery = receiver.wait_for(jid)

    assert delivery.verified is True
    body = delivery.json()
    assert body["type"] == "tts.completed"
    assert body["job_id"] == jid
    assert body["model"] == ELEVEN
    run_id = body["run_id"]
    audio = body["audio"]
    path = Path(audio["path"])
    assert path.parent == audio_dir
    assert jid not in path.name  # derived from a hash, never the raw id
    data = path.read_bytes()
    assert data == simulator.audio_bytes(run_id)
    assert audio["sha256"] == hashlib.sha256(data).hexdigest()
    assert audio["bytes"] == len(data)
    assert audio["content_type"] == "audio/wav"
    assert delivery.headers["webhook-id"].startswith("msg_")

    polls = simulator.status_polls(run_id)
    assert len(polls) == 4  # three pending answers, then completed
    for poll in polls:
        assert poll.query["model"] == ELEVEN
        assert poll.query["cost"] == "0.05"
        assert poll.query["paymentSource"] == "USD"
        assert poll.query["isApiRequest"] == "True"
        assert poll.headers["x-api-key"]
    submit = next(
        r
        for r in simulator.requests
        if r.body and jid and r.path == "/api/tts" and "Hello there" in str(r.body.get("text"))
    )
    assert submit.body is not None
    assert submit.body["voice"] == "Rachel"

    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "delivered" and j)
    assert job.status == "completed"
    assert job.run_id == run_id
    assert job.polls == 4
    assert job.outcome["audio"]["sha256"] == audio["sha256"]
    assert len(receiver.for_job(jid)) == 1


@pytest.mark.parametrize("mode", ["sync_json", "sync_bytes"])
def test_synchronous_answers(
    mode: str, send: Send, receiver: Receiver, simulator: Simulator, store: JobStore
) -> None:
    jid = job_id()
    send(
        names.SUBMIT_TTS, f"Sync [[sim mode={mode}]]", "tts-1", notify_url=receiver.url, job_id=jid
    )
    body = receiver.wait_for(jid).json()
    assert body["type"] == "tts.completed"
    assert body["run_id"] is None
    data = Path(body["audio"]["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == body["audio"]["sha256"]
    assert data[:4] == b"RIFF"
    job = store.get(jid)
    assert job is not None
    assert job.polls == 0


def test_poll_by_name_defaults_job_id_to_run_id(
    send: Send, receiver: Receiver, simulator: Simulator, store: JobStore
) -> None:
    run_id = simulator.create_run(model=ELEVEN)
    send(
        names.POLL_TTS,
        run_id,
        ELEVEN,
        cost=0.2,
        payment_source="XNO",
        is_api_request=False,
        notify_url=receiver.url,
    )
    body = receiver.wait_for(run_id).json()
    assert body["type"] == "tts.completed"
    assert body["run_id"] == run_id
    for poll in simulator.status_polls(run_id):
        assert poll.query["cost"] == "0.2"
        assert poll.query["paymentSource"] == "XNO"
        assert poll.query["isApiRequest"] == "False"


def test_job_without_notify_url_completes(send: Send, store: JobStore) -> None:
    jid = job_id()
    send(names.SUBMIT_TTS, "Quiet [[sim pending=1]]", ELEVEN, job_id=jid)
    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "none" and j)
    assert job.status == "completed"
    assert Path(job.outcome["audio"]["path"]).exists()


def test_pending_jobs_hold_no_worker_slot(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    """12 jobs pending 1.5 s each on a 4-slot worker: all are polled before any completes.

    A worker that waited inside a task could poll at most 4 of them before the first finished.
    """
    jids = [job_id() for _ in range(12)]
    for jid in jids:
        send(
            names.SUBMIT_TTS,
            f"Wait {jid} [[sim pending=1 pending_s=1.5]]",
            ELEVEN,
            notify_url=receiver.url,
            job_id=jid,
        )
    bodies = [receiver.wait_for(jid).json() for jid in jids]
    run_ids = {b["run_id"] for b in bodies}
    assert all(b["type"] == "tts.completed" for b in bodies)
    first_completed_at = min(r.at for rid in run_ids for r in simulator.status_polls(rid)[-1:])
    polled_before = {
        rid
        for rid in run_ids
        if any(r.at < first_completed_at for r in simulator.status_polls(rid))
    }
    assert len(polled_before) == 12
