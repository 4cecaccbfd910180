"""A speech job as this app sees it. The webhooks already applied are the client's
``WebhookEvent`` table (``tts_client.django``)."""

from __future__ import annotations

import uuid

from django.db import models


def new_job_id() -> str:
    return str(uuid.uuid4())


class SpeechJob(models.Model):
    """One text to speak; the worker reports its outcome under ``job_id``."""

    job_id = models.CharField(primary_key=True, max_length=64, default=new_job_id)
    text = models.TextField()
    model = models.CharField(max_length=100)
    voice = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, default="queued")  # queued, completed, failed
    # Where the audio can be read: file:// on the worker's disk, or a presigned S3 GET.
    audio_url = models.CharField(max_length=2000, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)
