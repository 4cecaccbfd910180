"""Builds the Celery app: configuration, task modules, signal handlers. Nothing else.

Run a worker with ``celery -A workers.app worker``.
"""

from __future__ import annotations

from celery import Celery

from tasks.config.celery_config import celery_config
from tasks.config.settings import get_settings
from workers import control, liveness, signals

# RedactedTask: every message our processes publish (retries included) shows Flower short,
# secret-free argument text.
app = Celery(
    "tts_worker",
    include=["tasks.adapters.tts", "tasks.adapters.maintenance"],
    task_cls="tasks.adapters.base:RedactedTask",
)
app.config_from_object(celery_config(get_settings()))
signals.connect()
control.register()
liveness.install(app)

__all__ = ["app"]
