"""verify_webhook on bodies and headers made by the worker's own code (tasks/webhooks/delivery.py,
tasks/steps/outcomes.py, tasks/audio/storage.py), for local disk, S3 and a failure; and the
shipped JSON Schema, which every such body must satisfy."""

from __future__ import annotations

import datetime
import json
from typing import Any

import jsonschema
import pytest

from tasks import errors
from tasks.audio.storage import StoredAudio
from tasks.webhooks.delivery import message_id, outcome_body, signed_headers
from tests.support.stack import SECRET
from tts_client import Audio, Error, TTSEvent, WebhookVerificationError, verify_webhook
from tts_client.schema import event_schema

OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmchIQ=="
SHA = "0c6b17a276a7663f42b8063028069c8e5a96c5fc86c23b11457f11fe1e2cdcb0"
LOCAL = StoredAudio(
    content_type="audio/mpeg",
    bytes=48213,
    sha256=SHA,
    url="file:///srv/audio/5d41.mp3",
    path="/srv/audio/5d41.mp3",
)
S3 = StoredAudio(
    content_type="audio/wav",
    bytes=12844,
    sha256=SHA,
    url="https://bucket.s3.eu-west-1.amazonaws.com/tts/5d41.wav?X-Amz-Signature=abc",
    bucket="bucket",
    key="tts/5d41.wav",
)


def completed(audio: StoredAudio) -> dict[str, Any]:
    outcome = {"type": "tts.completed", "audio": audio.as_dict()}
    return outcome_body(
        "job-1", "run-1", "Elevenlabs-Turbo-V2.5", outcome, cost=0.0006, payment_source="USD"
    )


def failed() -> dict[str, Any]:
    error = errors.ContentPolicyViolation("Content rejected by provider.")
    outcome = {"type": "tts.failed", "error": error.as_dict()}
    return outcome_body("job-2", None, "Elevenlabs-V3", outcome, currency="USD")


def reused() -> dict[str, Any]:
    """A job answered by an identical request's audio (TTS_REUSE_TTL)."""
    outcome = {"type": "tts.completed", "audio": LOCAL.as_dict(), "reused_from": "job-1"}
    return outcome_body("job-3", None, "Elevenlabs-Turbo-V2.5", outcome, cost=0.0)


BODIES = {
    "local": completed(LOCAL),
    "s3": completed(S3),
    "failed": failed(),
    "reused": reused(),
}


def delivery(body: dict[str, Any], *, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """The payload and headers exactly as tasks/webhooks.deliver sends them."""
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True)
    now = datetime.datetime.now(tz=datetime.UTC)
    return payload.encode(), signed_headers(secret, message_id("job", "f00d"), payload, now=now)


@pytest.mark.parametrize("name", BODIES)
def test_every_body_the_worker_makes_satisfies_the_shipped_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(event_schema())
    jsonschema.validate(BODIES[name], event_schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(
    "broken",
    [
        {"type": "tts.done"},
        {"audio": None},
        {"error": {"code": "X", "message": "both audio and error"}},
        {"job_id": ""},
        {"reused_from": ""},
    ],
)
def test_the_schema_refuses_what_the_worker_never_sends(broken: dict[str, Any]) -> None:
    body = {k: v for k, v in BODIES["local"].items() if v is not None or k != "audio"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, **broken}, event_schema())


def test_a_local_disk_event() -> None:
    event = verify_webhook(SECRET, *delivery(BODIES["local"]))
    assert isinstance(event, TTSEvent)
    assert (event.type, event.job_id, event.webhook_id) == ("tts.completed", "job-1", "msg_f00d")
    assert event.completed
    assert event.audio == Audio(
        url="file:///srv/audio/5d41.mp3",
        content_type="audio/mpeg",
        bytes=48213,
        sha256=SHA,
        path="/srv/audio/5d41.mp3",
    )
    assert (event.cost, event.payment_source, event.currency) == (0.0006, "USD", None)
    assert (event.run_id, event.model, event.error) == ("run-1", "Elevenlabs-Turbo-V2.5", None)


def test_an_s3_event() -> None:
    event = verify_webhook(SECRET, *delivery(BODIES["s3"]))
    assert event.audio is not None
    assert event.audio.url.startswith("https://bucket.s3.")
    assert (event.audio.bucket, event.audio.key, event.audio.path) == (
        "bucket",
        "tts/5d41.wav",
        None,
    )


def test_a_failed_event() -> None:
    body, headers = delivery(BODIES["failed"])
    event = verify_webhook(SECRET, body.decode(), {k.upper(): v for k, v in headers.items()})
    assert (event.type, event.completed, event.audio, event.run_id) == (
        "tts.failed",
        False,
        None,
        None,
    )
    assert event.error == Error("CONTENT_POLICY_VIOLATION", "Content rejected by provider.")
    assert (event.cost, event.currency) == (None, "USD")


def test_an_altered_body_raises() -> None:
    body, headers = delivery(BODIES["local"])
    altered = body.replace(b"tts.completed", b"tts.failed")
    assert altered != body
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, altered, headers)


def test_another_secret_raises() -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(OTHER_SECRET, *delivery(BODIES["local"]))
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, *delivery(BODIES["local"], secret=OTHER_SECRET))


def test_unsigned_or_stale_deliveries_raise() -> None:
    body, headers = delivery(BODIES["local"])
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, body, unsigned)
    payload = body.decode()
    an_hour_ago = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(hours=1)
    stale = signed_headers(SECRET, "msg_x", payload, now=an_hour_ago)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, body, stale)


def test_a_signed_body_that_is_no_tts_event_raises() -> None:
    body, headers = delivery({"type": "user.created", "job_id": "x"})
    with pytest.raises(WebhookVerificationError, match="not a TTS event"):
        verify_webhook(SECRET, body, headers)


def test_arguments_of_the_wrong_type_raise_type_error() -> None:
    body, headers = delivery(BODIES["local"])
    with pytest.raises(TypeError):
        verify_webhook("", body, headers)
    with pytest.raises(TypeError):
        verify_webhook(SECRET, json.loads(body), headers)  # type: ignore[arg-type]


def test_a_reused_event() -> None:
    event = verify_webhook(SECRET, *delivery(reused()))
    assert event.reused_from == "job-1"
    assert event.cost == 0.0
    assert event.audio is not None
    assert event.audio.sha256 == SHA
    plain = verify_webhook(SECRET, *delivery(completed(LOCAL)))
    assert plain.reused_from is None
