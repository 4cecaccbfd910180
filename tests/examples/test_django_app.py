"""The Django example against a real worker, the simulator and Redis.

Django is set up once for this module from the example's own settings module (environment
variables, as in production) on a fresh SQLite file, migrated with the example's migrations.
Requests go through ``django.test.Client``; the worker's webhook reaches the same project served
on loopback. No test transaction wraps the requests, so ``on_commit`` runs as it does for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import transaction
from django.test import Client
from django.test.utils import override_settings

from tasks.record.jobs import JobStore
from tests.examples.support import LoopbackServer, Received, check_replays_and_forgeries
from tests.support.stack import ELEVEN, SECRET, wait_until
from tests.support.worker import WorkerProcess
from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

HOOK = "/webhooks/tts"


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoopbackServer]:
    env = {
        "DJANGO_SETTINGS_MODULE": "examples.django_app.settings",
        "CELERY_BROKER_URL": redis_server.url,
        "TTS_WEBHOOK_SECRET": SECRET,
        "SPEECH_DB": str(tmp_path_factory.mktemp("django") / "speech.sqlite3"),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,testserver",
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        django.setup()
        call_command("migrate", verbosity=0)
        from examples.django_app.speech import tts

        with (
            LoopbackServer(get_wsgi_application()) as srv,
            override_settings(TTS_NOTIFY_URL=srv.url(HOOK)),
        ):
            yield srv
        tts.celery_client().close()


@pytest.fixture
def client(server: LoopbackServer) -> Client:
    return Client()


def speak(client: Client, text: str) -> str:
    answer = client.post(
        "/speech",
        {"text": text, "model": ELEVEN, "voice": "Rachel"},
        content_type="application/json",
    )
    assert answer.status_code == 202, answer.content
    job_id: str = answer.json()["job_id"]
    return job_id


def settled(client: Client, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/speech/{job_id}").json()
        return job if job["status"] != "queued" else None

    result: dict[str, Any] = wait_until(done)
    return result


def delivery_for(server: LoopbackServer, job_id: str) -> Received:
    return server.wait_for(lambda r: r.path == HOOK and json.loads(r.body)["job_id"] == job_id)


def test_speech_arrives_once_and_forgeries_are_refused(
    client: Client, server: LoopbackServer, store: JobStore
) -> None:
    from examples.django_app.speech.models import WebhookDelivery

    job_id = speak(client, "Hello from Django [[sim pending=1]]")
    job = settled(client, job_id)
    assert job["status"] == "completed"
    assert Path(job["audio_path"]).read_bytes()[:4] == b"RIFF"

    delivery = delivery_for(server, job_id)
    assert delivery.status == 200
    assert json.loads(delivery.answer) == {"status": "processed"}
    wait_until(lambda: (j := store.get(job_id)) and j.notify_state == "delivered")

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, object]:
        answer = client.post(
            HOOK,
            body,
            content_type=headers.get("content-type", "application/json"),
            headers={k: v for k, v in headers.items() if k != "content-type"},
        )
        return answer.status_code, answer.json()

    check_replays_and_forgeries(post, delivery, secret=SECRET)
    assert client.get(f"/speech/{job_id}").json() == job
    assert WebhookDelivery.objects.filter(webhook_id=delivery.headers["webhook-id"]).count() == 1
    assert len([r for r in server.received if r.path == HOOK and job_id.encode() in r.body]) == 1


def test_failed_job_is_recorded_with_its_code(client: Client) -> None:
    job_id = speak(client, "Rude words [[sim pending=1 outcome=content_policy]]")
    job = settled(client, job_id)
    assert job["status"] == "failed"
    assert job["error_code"] == "CONTENT_POLICY_VIOLATION"
    assert job["audio_path"] == ""


def test_task_is_sent_only_when_the_transaction_commits(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.django_app.speech import tts
    from examples.django_app.speech.models import SpeechJob

    sent: list[str] = []
    monkeypatch.setattr(tts, "enqueue", lambda job: sent.append(job.job_id))

    created: list[str] = []

    def view_that_fails_after_creating_the_job() -> None:
        with transaction.atomic():
            created.append(tts.request_speech("Never spoken", ELEVEN).job_id)
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError, match="the view failed"):
        view_that_fails_after_creating_the_job()
    assert len(created) == 1
    assert sent == []
    assert not SpeechJob.objects.filter(job_id=created[0]).exists()

    with transaction.atomic():
        job = tts.request_speech("Spoken", ELEVEN)
        assert sent == []  # not before the row is visible to others
    assert sent == [job.job_id]


def test_bad_requests(client: Client) -> None:
    no_text = client.post("/speech", {"model": ELEVEN}, content_type="application/json")
    assert no_text.status_code == 400
    assert client.post("/speech", b"[]", content_type="application/json").status_code == 400
    assert client.get("/speech/no-such-job").status_code == 404
    assert client.post(HOOK, b"{}", content_type="application/json").status_code == 401
    assert client.get(HOOK).status_code == 405
