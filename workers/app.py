"""Builds the Celery app: configuration, task modules, signal handlers. Nothing else.

Run a worker with ``celery -A workers.app worker``.
"""

from __future__ import annotations

from celery import Celery

from workers import control, liveness, signals
from workers.celery_config import celery_config
from workers.settings import get_settings

# RedactedTask: every message our processes publish (retries included) shows Flower short,
# secret-free argument text.
app = Celery(
    "tts_worker", include=["tasks.tts", "tasks.maintenance"], task_cls="tasks.base:RedactedTask"
)
app.config_from_object(celery_config(get_settings()))
signals.connect()
control.register()
liveness.install(app)

__all__ = ["app"]
