"""The TTS worker as this app uses it: ``submit_on_commit`` from the client package.

No code of the worker is imported; the client sends the task by name to its queue.
"""

from __future__ import annotations

from examples.django_app.speech.models import SpeechJob
from tts_client.django import submit_on_commit


def request_speech(text: str, model: str, voice: str = "") -> SpeechJob:
    """Record a job and send it once the surrounding transaction commits.

    ``on_commit``: a task sent before the commit could finish (and its webhook arrive) before the
    row exists, and a rolled-back job would still be spoken. The outcome comes back to
    ``TTS_NOTIFY_URL``.
    """
    job = SpeechJob.objects.create(text=text, model=model, voice=voice)
    submit_on_commit(text, model, voice=voice or None, job_id=job.job_id)
    return job
