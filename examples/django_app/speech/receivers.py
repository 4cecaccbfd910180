"""The worker's outcome, applied to the job it belongs to.

The client's webhook view has verified the signature and recorded the ``webhook-id`` in the
transaction this runs in: a repeated delivery never gets here, and if this fails, neither the
record nor the change commits (the worker delivers again later).
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver
from django.utils import timezone

from examples.django_app.speech.models import SpeechJob
from tts_client import TTSEvent
from tts_client.django import webhook_received


@receiver(webhook_received)
def apply_outcome(sender: Any, event: TTSEvent, **_: Any) -> None:
    SpeechJob.objects.filter(job_id=event.job_id).update(
        status="completed" if event.completed else "failed",
        audio_url=event.audio.url if event.audio else "",
        error_code=event.error.code if event.error else "",
        finished_at=timezone.now(),
    )
