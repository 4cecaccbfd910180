"""The steps of a job as plain functions: submit, poll, download, notify (and cancel).

Each takes a :class:`tasks.steps.context.Ctx` (everything it touches outside) and a
:class:`Delivery` (which message this is), and returns the job id when the message is done with, or
a :class:`Retry` when this very message must run again later (Celery's ``Task.retry``: same task
id, ``retries + 1``). The Celery tasks in :mod:`tasks.adapters.tts` only unpack and translate; the
simulation (tests/sim) calls these functions directly with fakes and a fake broker.

Retry policy by class: :class:`errors.TransientError` is retried with backoff, bounded by
``TTS_MAX_RETRIES`` and the job's deadline; :class:`errors.PermanentError` fails the job at once.
Anything else propagates, and the message is not acked as done: a job-store error (the store is
down, full, read-only, loading) is a retry of the same message with no count cap; any other
exception (a bug) is retried up to ``TTS_MAX_DELIVERIES`` times, then the job fails announced
(:mod:`tasks.adapters.acks`). The delivery count parks a step that keeps crashing its process.

The package also owns what a step is handed (:mod:`tasks.steps.context`), how a job ends
(:mod:`tasks.steps.outcomes`), and a submit answered by an identical request
(:mod:`tasks.steps.reuse`). It may import ``pacing``, ``webhooks``, ``nanogpt``, ``audio``,
``net``, ``record``, ``config`` and the leaf modules at the top of ``tasks``; never ``sweeps``,
``adapters``, ``client`` or ``workers``.
"""

from __future__ import annotations

from typing import Any

from tasks import names
from tasks.steps.accept import accept_poll, accept_submit, job_identity, reject
from tasks.steps.base import Delivery, Result, Retry
from tasks.steps.cancel import cancel
from tasks.steps.download import download
from tasks.steps.notify import notify
from tasks.steps.poll import poll
from tasks.steps.submit import AnswerUnrecorded, submit

__all__ = [
    "STEPS",
    "AnswerUnrecorded",
    "Delivery",
    "Result",
    "Retry",
    "accept_poll",
    "accept_submit",
    "cancel",
    "download",
    "job_identity",
    "notify",
    "poll",
    "reject",
    "submit",
]

#: The step function for each task name (the simulation's fake Celery looks them up here).
STEPS: dict[str, Any] = {
    names.SUBMIT_TTS: submit,
    names.POLL_TTS: poll,
    names.DOWNLOAD_AUDIO: download,
    names.NOTIFY: notify,
    names.CANCEL: cancel,
}
