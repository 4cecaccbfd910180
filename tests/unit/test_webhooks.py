"""Signatures verify with the independent standardwebhooks implementation."""

from __future__ import annotations

import base64
import datetime
import json
import tracemalloc
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tasks import errors
from tasks.config.settings import Settings
from tasks.net.safe_http import SafeHttp
from tasks.webhooks import delivery as webhooks
from tests.support.gzip_bomb import MIB, BombReceiver
from workers.receiver import Receiver

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
    headers = webhooks.signed_headers(SECRET, webhooks.message_id("job-1", None), payload, now=now)
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


def test_message_id_is_the_outcomes() -> None:
    assert webhooks.message_id("a", "0f" * 16) == "msg_" + "0f" * 16
    assert webhooks.message_id("a", "1") != webhooks.message_id("a", "2")


def test_message_id_of_a_record_without_outcome_id_is_stable_per_job() -> None:
    assert webhooks.message_id("a", None) == webhooks.message_id("a", None)
    assert webhooks.message_id("a", None) != webhooks.message_id("b", None)
    assert webhooks.message_id("a", None).startswith("msg_")


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


@pytest.fixture(scope="module")
def bomb() -> Iterator[BombReceiver]:
    with BombReceiver() as receiver:
        yield receiver


def test_gzip_bomb_reply_is_never_inflated(bomb: BombReceiver) -> None:
    assert len(bomb.body) < 300_000  # the premise: a small reply on the wire
    http = SafeHttp(trusted_hosts=frozenset({"127.0.0.1"}), timeout_s=(1.0, 5.0), user_agent="test")
    tracemalloc.start()
    try:
        status = webhooks.deliver(http, bomb.url, {"type": "t"}, msg_id="msg_1", secret=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        http.close()
    assert status == 200
    assert peak < 5 * MIB, f"delivery allocated {peak / MIB:.0f} MiB"
    assert bomb.posts[-1][1]["accept-encoding"] == "identity"


@pytest.mark.parametrize("key", [b"", b"\0", b"k" * 16, b"k" * 23])
def test_short_webhook_secret_refused(key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    with pytest.raises(ValidationError, match=r"TTS_WEBHOOK_SECRET .* at least 24"):
        Settings(TTS_WEBHOOK_SECRET=secret)


def test_webhook_secret_of_24_bytes_accepted() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    settings = Settings(TTS_WEBHOOK_SECRET=secret)
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == secret


@pytest.fixture(scope="module")
def status_receiver() -> Iterator[Receiver]:
    """Answers ``/status/NNN`` with NNN."""
    with Receiver(respond=lambda d: int(d.path.rsplit("/", 1)[1])) as receiver:
        yield receiver


@pytest.mark.parametrize(
    ("status", "raised"),
    [
        (200, None),
        (204, None),
        (500, errors.WebhookRefused),
        (503, errors.WebhookRefused),
        (408, errors.WebhookRefused),
        (409, errors.WebhookRefused),
        (425, errors.WebhookRefused),
        (429, errors.WebhookRefused),
        (410, errors.WebhookGone),
        (301, errors.WebhookRejected),
        (302, errors.WebhookRejected),
        (307, errors.WebhookRejected),
        (400, errors.WebhookRejected),
        (401, errors.WebhookRejected),
        (403, errors.WebhookRejected),
        (404, errors.WebhookRejected),
        (422, errors.WebhookRejected),
    ],
)
def test_reply_status_policy(
    status_receiver: Receiver, status: int, raised: type[errors.TTSError] | None
) -> None:
    http = SafeHttp(trusted_hosts=frozenset({"127.0.0.1"}), timeout_s=(1.0, 5.0), user_agent="test")
    url = status_receiver.url.replace("/hook", f"/status/{status}")
    try:
        if raised is None:
            assert webhooks.deliver(http, url, {}, msg_id="msg_1", secret=None) == status
        else:
            with pytest.raises(raised, match=str(status)):
                webhooks.deliver(http, url, {}, msg_id="msg_1", secret=None)
    finally:
        http.close()
    if raised is errors.WebhookRejected:
        assert issubclass(raised, errors.PermanentError)  # the notify step stops: refused
