"""Verifying the worker's webhook (Standard Webhooks) and reading it as a :class:`TTSEvent`."""

from __future__ import annotations

import json
from collections.abc import Mapping

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryError

from tts_client.models import TTSEvent


class WebhookVerificationError(Exception):
    """The webhook is not one the worker signed with this secret: forged, altered, replayed
    more than five minutes late, unsigned, or not a TTS event. Answer it with a 4xx."""


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> TTSEvent:
    """Check the signature of a webhook as received and return its event.

    ``secret``: the worker's ``TTS_WEBHOOK_SECRET`` (``whsec_…``). ``body``: the raw request
    body, exactly as received (not re-serialised JSON). ``headers``: the request's headers
    (any case); ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` are read.
    Raises :class:`WebhookVerificationError` for anything but a valid, signed TTS event.
    """
    if not isinstance(secret, str) or not secret:
        raise TypeError("secret must be the worker's TTS_WEBHOOK_SECRET (a non-empty str)")
    if not isinstance(body, bytes | str):
        raise TypeError(f"body must be the raw bytes received, not {type(body).__name__}")
    lowered = {str(name).lower(): str(value) for name, value in headers.items()}
    try:
        Webhook(secret).verify(body, lowered)
    except _LibraryError as exc:
        raise WebhookVerificationError(str(exc)) from None
    except ValueError as exc:  # an undecodable body or header
        raise WebhookVerificationError(f"unreadable webhook: {exc}") from None
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        return TTSEvent.from_body(data, webhook_id=lowered["webhook-id"])
    except ValueError as exc:
        raise WebhookVerificationError(f"not a TTS event: {exc}") from None
