"""Django integration: add ``"tts_client.django"`` to ``INSTALLED_APPS``, include
``tts_client.django.urls``, and run ``migrate``.

* :func:`submit_on_commit` sends a job once the surrounding transaction commits;
* ``POST <prefix>webhook`` (:func:`tts_client.django.views.webhook`) verifies the worker's
  webhook, records its ``webhook-id`` (:class:`~tts_client.django.models.WebhookEvent`) and sends
  :data:`webhook_received` in one transaction: a repeated delivery answers 200 and does nothing;
* ``GET <prefix>jobs/<job_id>/events`` (:func:`tts_client.django.views.job_events`) streams the
  job's updates as server-sent events.

Settings: ``TTS_BROKER_URL`` (default ``CELERY_BROKER_URL``), ``TTS_REDIS_URL`` (default the
broker URL when it is Redis), ``TTS_WEBHOOK_SECRET`` (required by the webhook view) and
``TTS_NOTIFY_URL`` (the ``notify_url`` :func:`submit_on_commit` uses when given none).
"""

from __future__ import annotations

from tts_client.django.client import get_client, submit_on_commit
from tts_client.django.signals import webhook_received

__all__ = ["get_client", "submit_on_commit", "webhook_received"]
