"""The project's :class:`TTSClient`, from its settings, and :func:`submit_on_commit`."""

from __future__ import annotations

import threading
import uuid

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from tts_client import checks
from tts_client.client import TTSClient

_lock = threading.Lock()
# One client per (broker, Redis) pair: it pools connections, and tests may change settings.
_clients: dict[tuple[str, str | None], TTSClient] = {}


def get_client() -> TTSClient:
    """The client for ``TTS_BROKER_URL`` (or ``CELERY_BROKER_URL``) and ``TTS_REDIS_URL``."""
    broker = getattr(settings, "TTS_BROKER_URL", None) or getattr(
        settings, "CELERY_BROKER_URL", None
    )
    if not broker:
        raise ImproperlyConfigured("set TTS_BROKER_URL (or CELERY_BROKER_URL): the TTS broker")
    redis_url = getattr(settings, "TTS_REDIS_URL", None) or None
    with _lock:
        client = _clients.get((broker, redis_url))
        if client is None:
            client = _clients[broker, redis_url] = TTSClient(broker, redis_url=redis_url)
    return client


def submit_on_commit(
    text: str,
    model: str,
    *,
    voice: str | None = None,
    speed: float | None = None,
    response_format: str | None = None,
    instructions: str | None = None,
    stability: float | None = None,
    similarity_boost: float | None = None,
    style: float | None = None,
    notify_url: str | None = None,
    job_id: str | None = None,
    reuse: bool = True,
    using: str | None = None,
) -> str:
    """:meth:`TTSClient.submit` once the transaction on ``using`` commits (at once outside
    one); returns the job id now. Nothing is sent if the transaction rolls back.

    Sent before the commit, the job could end, and its webhook arrive, before the rows that
    refer to it exist. Types are checked here, at the call. ``notify_url`` defaults to the
    ``TTS_NOTIFY_URL`` setting.
    """
    checks.text("text", text)
    checks.text("model", model)
    for name, value in (
        ("voice", voice),
        ("response_format", response_format),
        ("instructions", instructions),
        ("notify_url", notify_url),
        ("job_id", job_id),
        ("using", using),
    ):
        checks.text(name, value, optional=True)
    for name, number in (
        ("speed", speed),
        ("stability", stability),
        ("similarity_boost", similarity_boost),
        ("style", style),
    ):
        checks.number(name, number)
    checks.flag("reuse", reuse)
    job_id = str(uuid.uuid4()) if job_id is None else job_id
    if notify_url is None:
        notify_url = getattr(settings, "TTS_NOTIFY_URL", None) or None

    def send() -> None:
        get_client().submit(
            text,
            model,
            voice=voice,
            speed=speed,
            response_format=response_format,
            instructions=instructions,
            stability=stability,
            similarity_boost=similarity_boost,
            style=style,
            notify_url=notify_url,
            job_id=job_id,
            reuse=reuse,
        )

    transaction.on_commit(send, using=using)
    return job_id
