"""Outcome webhooks, signed per Standard Webhooks (https://www.standardwebhooks.com/).

The ``webhook-id`` is made from the random ``outcome_id`` stored with the job's outcome, so
every attempt for one outcome carries the same id and receivers can drop repeats, while a job id
used again after its record expired gets a new one (a receiver dropping repeats keeps it).
Signing uses the ``standardwebhooks`` package, the same code a receiver verifies with.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

from standardwebhooks.webhooks import Webhook

from tasks import errors
from tasks.net.http_errors import mapped
from tasks.net.safe_http import SafeHttp

USER_AGENT = "tts-worker-webhooks/1"
# The 4xx answers that mean "not now" rather than "never": a timeout, a conflict (the receiver
# is busy with this id), Too Early, Too Many Requests. Retried like a 5xx.
RETRIED_4XX = frozenset({408, 409, 425, 429})


def message_id(job_id: str, outcome_id: str | None) -> str:
    """The ``webhook-id`` of one outcome: stable across its attempts, new for a new outcome.

    A record settled before ``outcome_id`` existed falls back to the job id's hash, so a
    webhook already being retried across an upgrade keeps its id.
    """
    if outcome_id:
        return "msg_" + outcome_id
    return "msg_" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def outcome_body(
    job_id: str,
    run_id: str | None,
    model: str | None,
    outcome: dict[str, Any],
    *,
    cost: float | None = None,
    payment_source: str | None = None,
    currency: str | None = None,
) -> dict[str, Any]:
    """The JSON body: ``type``, ids, what NanoGPT said it cost (``cost`` with the ticket's
    ``payment_source``, or with a synchronous answer's ``currency``; null when it did not say),
    ``audio`` (completed) or ``error`` (failed), and ``reused_from`` (the job whose audio, or
    verdict, answered this one: TTS_REUSE_TTL) when it was."""
    body: dict[str, Any] = {
        "type": outcome["type"],
        "job_id": job_id,
        "run_id": run_id,
        "model": model,
        "cost": cost,
        "payment_source": payment_source,
        "currency": currency,
    }
    for part in ("audio", "error", "reused_from"):
        if part in outcome:
            body[part] = outcome[part]
    return body


def signed_headers(
    secret: str | None, msg_id: str, payload: str, *, now: datetime.datetime
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and, with a secret, ``webhook-signature``."""
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "Content-Type": "application/json",
    }
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(msg_id, now, payload)
    return headers


def deliver(
    http: SafeHttp, url: str, body: dict[str, Any], *, msg_id: str, secret: str | None
) -> int:
    """POST the body once; return the status code of a 2xx answer (its body is never read).

    Raises :class:`errors.WebhookRefused` (retried) for 5xx, 408/409/425/429 or no answer;
    :class:`errors.WebhookGone` on 410 (the receiver asks us to stop); :class:`errors.UnsafeUrl`
    for a refused address; :class:`errors.WebhookRejected` (not retried) for any other answer:
    a 3xx (never followed: the next hop would be a URL nobody checked at submit time) or a 4xx.
    """
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True)
    now = datetime.datetime.now(tz=datetime.UTC)
    headers = signed_headers(secret, msg_id, payload, now=now)
    with mapped("webhook", transient=errors.WebhookRefused):
        response = http.request("POST", url, data=payload.encode(), headers=headers)
    # Only the status line counts. The reply's body is never read: closing the streamed
    # response drops it unread, however large or compressed it is.
    with response:
        status = response.status_code
    if 200 <= status < 300:
        return status
    if status == 410:
        raise errors.WebhookGone("receiver answered 410 Gone")
    if 500 <= status < 600 or status in RETRIED_4XX:
        raise errors.WebhookRefused(f"receiver answered HTTP {status}")
    # Sending the same signed body again cannot change a 400, 401 or 404: stop now rather than
    # retry the hopeless for TTS_WEBHOOK_RETRY_PERIOD.
    raise errors.WebhookRejected(f"receiver answered HTTP {status}")
