"""The Django example, on ``tts_client.django``, against a real worker, the simulator and Redis.

Django is set up once for this module from the example's own settings module (environment
variables, as in production) on a fresh SQLite file, migrated with the example's migrations.
Requests go through ``django.test.Client``; the worker's webhook reaches the same project served
on loopback. No test transaction wraps the requests, so ``on_commit`` runs as it does for real.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import django
import pytest
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import transaction
from django.test import Client
from django.test.utils import override_settings
from standardwebhooks.webhooks import Webhook

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
from tts_client.django import get_client, submit_on_commit, webhook_received
from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

HOOK = "/tts/webhook"


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
        with (
            LoopbackServer(get_wsgi_application()) as srv,
            override_settings(TTS_NOTIFY_URL=srv.url(HOOK)),
        ):
            yield srv
        get_client().close()


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


def local_file(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file", url
    return Path(url2pathname(parts.path))


def test_speech_arrives_once_and_forgeries_are_refused(
    client: Client, server: LoopbackServer, store: JobStore
) -> None:
    from tts_client.django.models import WebhookEvent

    job_id = speak(client, "Hello from Django [[sim pending=1]]")
    job = settled(client, job_id)
    assert job["status"] == "completed"
    assert local_file(job["audio_url"]).read_bytes()[:4] == b"RIFF"

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
    [recorded] = WebhookEvent.objects.filter(webhook_id=delivery.headers["webhook-id"])
    assert (recorded.job_id, recorded.type) == (job_id, "tts.completed")
    assert len([r for r in server.received if r.path == HOOK and job_id.encode() in r.body]) == 1


def test_failed_job_is_recorded_with_its_code(client: Client) -> None:
    job_id = speak(client, "Rude words [[sim pending=1 outcome=content_policy]]")
    job = settled(client, job_id)
    assert job["status"] == "failed"
    assert job["error_code"] == "CONTENT_POLICY_VIOLATION"
    assert job["audio_url"] == ""


def test_task_is_sent_only_when_the_transaction_commits(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.django_app.speech import tts
    from examples.django_app.speech.models import SpeechJob

    sent: list[str] = []
    monkeypatch.setattr(get_client(), "submit", lambda *a, **kw: sent.append(kw["job_id"]))

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


def test_the_event_stream_follows_a_job_to_its_end(client: Client, store: JobStore) -> None:
    """Each change the worker records reaches the browser as it happens, and the stream ends
    with the job's end."""
    job_id = f"sse-{uuid.uuid4().hex}"
    with ProgressPlayer(store.redis, job_id):
        answer = client.get(f"/tts/jobs/{job_id}/events")
        assert answer.status_code == 200
        assert answer["Content-Type"] == "text/event-stream"
        assert answer["Cache-Control"] == "no-cache"
        events = server_sent_events(answer.streaming_content)
    check_played_events(events, job_id)


def test_the_event_stream_of_a_real_job_ends_completed(client: Client) -> None:
    job_id = speak(client, "Watched from Django [[sim pending=2]]")
    events = server_sent_events(client.get(f"/tts/jobs/{job_id}/events").streaming_content)
    assert events, "no event"
    assert {name for name, _ in events} == {"update"}
    statuses = [data["status"] for _, data in events]
    assert statuses[-1] == "completed"
    assert set(statuses) <= {"submitting", "posting", "polling", "downloading", "completed"}
    assert settled(client, job_id)["status"] == "completed"


def signed(body: dict[str, Any], webhook_id: str) -> tuple[bytes, dict[str, str]]:
    """A delivery as the worker signs it."""
    payload = json.dumps(body)
    now = datetime.datetime.now(tz=datetime.UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, now, payload),
    }
    return payload.encode(), headers


def test_a_failing_receiver_rolls_the_record_back_for_the_next_delivery(
    server: LoopbackServer,
) -> None:
    """The webhook-id commits with the receivers' effect: if one raises, neither commits, the
    worker gets a 500 and delivers again, and the next delivery is applied."""
    from tts_client.django.models import WebhookEvent

    webhook_id = f"msg_{uuid.uuid4().hex}"
    body, headers = signed(
        {"type": "tts.failed", "job_id": "j", "error": {"code": "X"}}, webhook_id
    )
    calls: list[str] = []

    def broken(sender: Any, event: Any, **_: Any) -> None:
        calls.append(event.webhook_id)
        raise RuntimeError("the app's database is down")

    webhook_received.connect(broken, dispatch_uid="broken")
    try:
        answer = Client(raise_request_exception=False).post(
            HOOK, body, content_type="application/json", headers=headers
        )
    finally:
        webhook_received.disconnect(dispatch_uid="broken")
    assert answer.status_code == 500
    assert calls == [webhook_id]
    assert not WebhookEvent.objects.filter(webhook_id=webhook_id).exists()

    again = Client().post(HOOK, body, content_type="application/json", headers=headers)
    assert (again.status_code, again.json()) == (200, {"status": "processed"})
    assert WebhookEvent.objects.filter(webhook_id=webhook_id).count() == 1


def test_submit_on_commit_checks_its_arguments_at_the_call(server: LoopbackServer) -> None:
    sent: list[Any] = []
    with transaction.atomic():
        with pytest.raises(TypeError, match="voice_id"):
            submit_on_commit("Hi", ELEVEN, voice_id="x")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="speed must be a number"):
            submit_on_commit("Hi", ELEVEN, speed="fast")  # type: ignore[arg-type]
        transaction.on_commit(lambda: sent.append("committed"))
    assert sent == ["committed"]
