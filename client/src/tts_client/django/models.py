"""The webhooks already applied, by ``webhook-id``."""

from __future__ import annotations

from django.db import models


class WebhookEvent(models.Model):
    """One webhook applied. The worker sends the same ``webhook-id`` on every attempt for one
    outcome, so the unique ``webhook_id`` turns a repeated delivery into a no-op."""

    webhook_id = models.CharField(max_length=255, unique=True)
    job_id = models.CharField(max_length=255, db_index=True)
    type = models.CharField(max_length=32)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "tts_client"

    def __str__(self) -> str:
        return f"{self.type} {self.job_id} ({self.webhook_id})"
