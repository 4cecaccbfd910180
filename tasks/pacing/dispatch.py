"""Publishing the next step of a job, by task name: one place that knows queues and arguments.

A :class:`Dispatcher` turns "poll this job next", "download", "notify" into messages and hands
them to a ``send`` function: Celery's ``send_task`` in a worker (:func:`celery_send`), the fake
broker in the simulation (tests/sim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tasks import names
from tasks.config import celery_config
from tasks.config.settings import Settings
from tasks.record.jobs import Job
from tasks.record.states import has_live_poll
from tasks.redact import args_repr, kwargs_repr


class Send(Protocol):
    def __call__(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
    ) -> None: ...


def celery_send(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    task_id: str | None = None,
) -> None:
    """Publish through the current Celery app, to the step's own queue, with redacted text,
    at once (a step that must wait is parked in Redis: tasks/sweeps/granting.py), never waiting
    longer than :data:`celery_config.PUBLISH_TIMEOUT_S` per attempt."""
    from celery import current_app

    options: dict[str, Any] = dict(celery_config.publish_options())
    if task_id is not None:
        options["task_id"] = task_id
    current_app.send_task(
        name,
        args=args,
        kwargs=kwargs,
        queue=names.QUEUES[name],
        argsrepr=args_repr(args),
        kwargsrepr=kwargs_repr(kwargs),
        **options,
    )


class Dispatcher:
    """The next step of a job, as a message."""

    def __init__(self, send: Send, settings: Callable[[], Settings]) -> None:
        self._send = send
        self._settings = settings

    def countdown_s(self, delay_s: float) -> float:
        """``delay_s`` as this broker must be given it (whole seconds >= 1 on RabbitMQ)."""
        return celery_config.broker_countdown_s(delay_s, self._settings())

    def poll(self, run_id: str, model: str, *, job_id: str, lease: str, seq: int) -> None:
        """The poll that holds lease ``(lease, seq)``, due now.

        Only ids and the lease travel: the poll reads the rest (cost, payment source, notify
        URL) from the job record, so messages stay small and carry no URL.
        """
        self._send(
            names.POLL_TTS,
            (run_id, model),
            {"job_id": job_id, "lease": lease, "seq": seq},
        )

    def poll_job(self, job: Job) -> None:
        """The current poll of a stored job (re-sent by the reconciler, released from parking)."""
        if not has_live_poll(job):
            return
        assert job.run_id
        assert job.model
        assert job.token
        assert job.seq
        self.poll(
            job.run_id,
            job.model,
            job_id=job.job_id,
            lease=job.token,
            seq=int(job.seq),
        )

    def download(self, job_id: str) -> None:
        self._send(names.DOWNLOAD_AUDIO, (job_id,), {})

    def notify(self, job_id: str) -> None:
        self._send(names.NOTIFY, (job_id,), {})

    def submit(self, request: dict[str, Any], *, task_id: str) -> None:
        """Re-send a submit under its original task id, so it is recognised as the same message."""
        rest = dict(request)
        args = (rest.pop("text"), rest.pop("model"))
        self._send(names.SUBMIT_TTS, args, rest, task_id=task_id)
