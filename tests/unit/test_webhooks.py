"""Signatures verify with the independent standardwebhooks implementation."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tasks import webhooks

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_signature_verifies_and_tamper_fails() -> None:
    body = webhooks.outcome_body(
        "job-1",
        "run-1",
        "Elevenlabs-V3",
        {"type": "tts.failed", "error": {"code": "TIMEOUT", "message": "m"}},
    )
    payload = json.dumps(body)
    now = datetime.datetime.now(tz=datetime.UTC)
    headers = webhooks.signed_headers(SECRET, webhooks.message_id("job-1"), payload, now=now)
    verified = Webhook(SECRET).verify(payload, headers)
    assert verified["error"]["code"] == "TIMEOUT"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(payload.replace("TIMEOUT", "NOPE"), headers)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(payload, headers)


def test_unsigned_without_secret() -> None:
    now = datetime.datetime.now(tz=datetime.UTC)
    headers = webhooks.signed_headers(None, "msg_1", "{}", now=now)
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "msg_1"


def test_message_id_is_stable_per_job() -> None:
    assert webhooks.message_id("a") == webhooks.message_id("a")
    assert webhooks.message_id("a") != webhooks.message_id("b")
    assert webhooks.message_id("a").startswith("msg_")


def test_body_shapes() -> None:
    audio = {"path": "/x.wav", "content_type": "audio/wav", "bytes": 3, "sha256": "ab"}
    done = webhooks.outcome_body("j", "r", "m", {"type": "tts.completed", "audio": audio})
    assert done == {
        "type": "tts.completed",
        "job_id": "j",
        "run_id": "r",
        "model": "m",
        "cost": None,
        "payment_source": None,
        "currency": None,
        "audio": audio,
    }


def test_body_carries_the_cost_it_is_given() -> None:
    error = {"code": "CANCELLED", "message": "m"}
    failed = webhooks.outcome_body(
        "j", "r", "m", {"type": "tts.failed", "error": error}, cost=0.0006, payment_source="USD"
    )
    assert (failed["cost"], failed["payment_source"], failed["currency"]) == (0.0006, "USD", None)
    assert failed["error"] == error
    sync = webhooks.outcome_body("j", None, "m", {"type": "tts.failed"}, cost=0.1, currency="EUR")
    assert (sync["cost"], sync["payment_source"], sync["currency"]) == (0.1, None, "EUR")
