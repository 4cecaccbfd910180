"""A speech job as this app sees it, and the webhook deliveries already applied."""

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
    audio_path = models.CharField(max_length=500, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)


class WebhookDelivery(models.Model):
    """A webhook applied once. The worker sends the same ``webhook-id`` on every attempt for one
    outcome, so the unique constraint turns a repeated delivery into an IntegrityError."""

    webhook_id = models.CharField(max_length=100)
    job_id = models.CharField(max_length=64)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["webhook_id"], name="speech_unique_webhook_id")
        ]
