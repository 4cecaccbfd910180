"""Publishing the next step of a job, by task name: one place that knows queues and arguments."""

from __future__ import annotations

from typing import Any

from celery import current_app

from tasks import names
from tasks import runtime as rt
from tasks.jobs import Job
from tasks.redact import args_repr, kwargs_repr
from workers import celery_config


def broker_countdown_s(countdown_s: float) -> float:
    """``countdown_s`` as this broker must be given it (whole seconds >= 1 on RabbitMQ)."""
    return celery_config.broker_countdown_s(countdown_s, rt.settings())


def _send(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, **options: Any
) -> None:
    current_app.send_task(
        name,
        args=args,
        kwargs=kwargs or {},
        queue=names.QUEUES[name],
        argsrepr=args_repr(args),
        kwargsrepr=kwargs_repr(kwargs or {}),
        **options,
    )


def poll(
    run_id: str, model: str, *, lease: str, seq: int, countdown_s: float, **kwargs: Any
) -> None:
    """The poll that holds lease ``(lease, seq)``, due in ``countdown_s`` seconds.

    Only ids and the lease travel (``kwargs`` is ``job_id``): the poll reads the rest (cost,
    payment source, notify URL) from the job record, so messages stay small and carry no URL.
    """
    countdown_s = broker_countdown_s(countdown_s)
    _send(
        names.POLL_TTS,
        (run_id, model),
        {**kwargs, "lease": lease, "seq": seq},
        countdown=countdown_s or None,
    )


def poll_job(job: Job, *, countdown_s: float = 0.0) -> None:
    """The current poll of a stored job (re-sent by the reconciler, released from parking)."""
    if not (job.run_id and job.model and job.token and job.seq):
        return
    poll(
        job.run_id,
        job.model,
        lease=job.token,
        seq=int(job.seq),
        countdown_s=countdown_s,
        job_id=job.job_id,
    )


def download(job_id: str) -> None:
    _send(names.DOWNLOAD_AUDIO, (job_id,))


def notify(job_id: str) -> None:
    _send(names.NOTIFY, (job_id,))


def submit(request: dict[str, Any], *, task_id: str) -> None:
    """Re-send a submit under its original task id, so it is recognised as the same attempt."""
    rest = dict(request)
    args = (rest.pop("text"), rest.pop("model"))
    _send(names.SUBMIT_TTS, args, rest, task_id=task_id)
