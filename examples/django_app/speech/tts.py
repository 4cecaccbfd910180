"""The TTS worker as this app uses it: a task name, a queue and a bare Celery client.

No code of the worker is imported; the task is sent by name, so this app needs only the broker.
"""

from __future__ import annotations

import functools

from celery import Celery
from django.conf import settings
from django.db import transaction

from examples.django_app.speech.models import SpeechJob

# The worker's public contract: the task name and the queue it listens on.
SUBMIT_TASK = "tts.submit_tts"
SUBMIT_QUEUE = "tts.submit"


@functools.cache
def celery_client() -> Celery:
    """One publishing client per process (it holds a broker connection pool)."""
    client = Celery("speech-app", broker=settings.CELERY_BROKER_URL, set_as_current=False)
    client.conf.task_serializer = "json"
    return client


def enqueue(job: SpeechJob) -> None:
    """Send the job to the worker; its outcome comes back to ``TTS_NOTIFY_URL``."""
    celery_client().send_task(
        SUBMIT_TASK,
        args=[job.text, job.model],
        kwargs={
            "voice": job.voice or None,
            "notify_url": settings.TTS_NOTIFY_URL,
            "job_id": job.job_id,
        },
        queue=SUBMIT_QUEUE,
    )


def request_speech(text: str, model: str, voice: str = "") -> SpeechJob:
    """Record a job and send it once the surrounding transaction commits.

    ``on_commit``: a task sent before the commit could finish (and its webhook arrive) before the
    row exists, and a rolled-back job would still be spoken.
    """
    job = SpeechJob.objects.create(text=text, model=model, voice=voice)
    transaction.on_commit(lambda: enqueue(job))
    return job
