"""Builds the Celery app: configuration, task modules, signal handlers. Nothing else.

Run a worker with ``celery -A workers.app worker``.
"""

from __future__ import annotations

from celery import Celery

from workers import signals
from workers.celery_config import celery_config
from workers.settings import get_settings

app = Celery("tts_worker", include=["tasks.tts", "tasks.maintenance"])
app.config_from_object(celery_config(get_settings()))
signals.connect()

__all__ = ["app"]
