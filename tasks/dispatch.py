"""Publishing the next step of a job, by task name: one place that knows queues and arguments."""

from __future__ import annotations

from typing import Any

from celery import current_app

from tasks import names
from tasks.redact import args_repr, kwargs_repr


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
    """The poll that holds lease ``(lease, seq)``, due in ``countdown_s`` seconds."""
    _send(
        names.POLL_TTS,
        (run_id, model),
        {**kwargs, "lease": lease, "seq": seq},
        countdown=max(0.0, countdown_s),
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
