"""The Flask example, on ``tts_client.flask``, against a real worker, the simulator and Redis.

Enqueueing goes through Flask's test client; the webhook comes from the worker over HTTP to the
same app served on loopback. The app must verify it, apply it once, and refuse a forgery.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.flask_app.app import create_app
from tasks.record.jobs import JobStore
from tests.examples.support import (
    LoopbackServer,
    ProgressPlayer,
    Received,
    check_played_events,
    check_replays_and_forgeries,
    server_sent_events,
)
from tests.support.stack import ELEVEN, SECRET, wait_until
from tests.support.worker import WorkerProcess
from tts_client.flask import get_client
from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

HOOK = "/tts/webhook"


@pytest.fixture(scope="module")
def app(
    redis_server: EmbeddedRedis, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    app = create_app(
        {
            "CELERY_BROKER_URL": redis_server.url,
            "TTS_WEBHOOK_SECRET": SECRET,
            "SPEECH_DB": str(tmp_path_factory.mktemp("flask") / "speech.sqlite3"),
        }
    )
    yield app
    get_client(app).close()


@pytest.fixture(scope="module")
def server(app: Flask) -> Iterator[LoopbackServer]:
    with LoopbackServer(app.wsgi_app) as srv:
        app.config["TTS_NOTIFY_URL"] = srv.url(HOOK)
        yield srv


@pytest.fixture
def client(app: Flask, server: LoopbackServer) -> FlaskClient:
    return app.test_client()


def speak(client: FlaskClient, text: str) -> str:
    answer = client.post("/speech", json={"text": text, "model": ELEVEN, "voice": "Rachel"})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    job_id: str = answer.get_json()["job_id"]
    return job_id


def settled(client: FlaskClient, job_id: str) -> dict:
    def done() -> dict | None:
        job: dict = client.get(f"/speech/{job_id}").get_json()
        return job if job["status"] != "queued" else None

    result: dict = wait_until(done)
    return result


def delivery_for(server: LoopbackServer, job_id: str) -> Received:
    return server.wait_for(lambda r: r.path == HOOK and json.loads(r.body)["job_id"] == job_id)


def deliveries_applied(app: Flask, webhook_id: str) -> int:
    with sqlite3.connect(app.config["SPEECH_DB"]) as db:
        row = db.execute(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,)
        ).fetchone()
    return int(row[0])


def test_speech_arrives_once_and_forgeries_are_refused(
    app: Flask, client: FlaskClient, server: LoopbackServer, store: JobStore
) -> None:
    job_id = speak(client, "Hello from Flask [[sim pending=1]]")
    job = settled(client, job_id)
    assert job["status"] == "completed"
    audio_url = urlsplit(job["audio_url"])
    assert audio_url.scheme == "file"
    assert Path(url2pathname(audio_url.path)).read_bytes()[:4] == b"RIFF"

    # The worker's delivery reached the app over HTTP, was verified and applied.
    delivery = delivery_for(server, job_id)
    assert delivery.status == 200
    assert json.loads(delivery.answer) == {"status": "processed"}
    wait_until(lambda: (j := store.get(job_id)) and j.notify_state == "delivered")
    webhook_id = delivery.headers["webhook-id"]

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, object]:
        answer = client.post(HOOK, data=body, headers=headers)
        return answer.status_code, answer.get_json()

    check_replays_and_forgeries(post, delivery, secret=SECRET)
    assert client.get(f"/speech/{job_id}").get_json() == job
    assert deliveries_applied(app, webhook_id) == 1
    assert len([r for r in server.received if r.path == HOOK and job_id.encode() in r.body]) == 1


def test_failed_job_is_recorded_with_its_code(client: FlaskClient, server: LoopbackServer) -> None:
    job_id = speak(client, "Rude words [[sim pending=1 outcome=content_policy]]")
    job = settled(client, job_id)
    assert job["status"] == "failed"
    assert job["error_code"] == "CONTENT_POLICY_VIOLATION"
    assert job["audio_url"] is None


def test_bad_requests(client: FlaskClient) -> None:
    assert client.post("/speech", json={"model": ELEVEN}).status_code == 400
    assert client.get("/speech/no-such-job").status_code == 404
    assert client.post(HOOK, data=b"{}").status_code == 401
    assert (
        client.post("/speech", json={"text": "x", "model": ELEVEN, "voice": 3}).status_code == 400
    )


def test_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="TTS_WEBHOOK_SECRET"):
        create_app({"TTS_WEBHOOK_SECRET": "", "SPEECH_DB": str(tmp_path / "db.sqlite3")})


def test_the_event_stream_follows_a_job_to_its_end(client: FlaskClient, store: JobStore) -> None:
    """Each change the worker records reaches the browser as it happens, and the stream ends
    with the job's end."""
    job_id = f"sse-{uuid.uuid4().hex}"
    with ProgressPlayer(store.redis, job_id):
        answer = client.get(f"/tts/jobs/{job_id}/events")
        assert answer.status_code == 200
        assert answer.mimetype == "text/event-stream"
        assert answer.headers["Cache-Control"] == "no-cache"
        events = server_sent_events(answer.response)
    check_played_events(events, job_id)


def test_the_event_stream_of_a_real_job_ends_completed(client: FlaskClient) -> None:
    job_id = speak(client, "Watched from Flask [[sim pending=2]]")
    events = server_sent_events(client.get(f"/tts/jobs/{job_id}/events").response)
    assert events, "no event"
    statuses = [data["status"] for _, data in events]
    assert statuses[-1] == "completed"
    assert set(statuses) <= {"submitting", "posting", "polling", "downloading", "completed"}
    assert settled(client, job_id)["status"] == "completed"
