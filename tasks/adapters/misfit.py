"""Messages of ours whose arguments do not fit their task: never dropped in silence.

A ``tts.*`` message with a misspelled keyword, a missing or extra positional argument, or args
and kwargs of the wrong kind fails inside Celery before our code runs (``TypeError`` binding the
call): no record, no webhook, and the app waits for ever. Here such a message ends like any bad
input, through :func:`tasks.steps.reject` (``INVALID_INPUT``, recorded, announced), under the job
id it names (its ``job_id``, else its task id, as a message that fitted would) and with its
``notify_url``. When nobody can be told (an internal step's message, no usable ``notify_url``,
no usable job id) it is counted (``tts_unusable_messages``) and logged at ERROR with its task id.

It is checked where the worker receives the message (:mod:`tasks.adapters.received`: it is recorded
at
once, as a message that fits is) and again when its task runs (:class:`CheckedTask`), so a
worker that could not record it at receipt still ends it. The count is taken once: by the task,
or at receipt for the messages the task never sees (kwargs that are no mapping, args no list:
Celery's tracer refuses those before calling the task).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from tasks import errors, metrics, names, steps
from tasks.adapters import runtime
from tasks.adapters.base import RedactedTask
from tasks.nanogpt import validation
from tasks.steps.context import Ctx

log = logging.getLogger(__name__)

#: The tasks an app sends, with a ``notify_url`` to answer to; the others are our own steps.
CALLER_TASKS = frozenset({names.SUBMIT_TTS, names.POLL_TTS})


def containers_ok(args: object, kwargs: object) -> bool:
    """Whether the message's args are a list and its kwargs a mapping, as Celery needs."""
    return isinstance(args, list | tuple) and isinstance(kwargs, dict)


@functools.lru_cache(maxsize=64)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature, worked out once: every message of every task is checked against its
    task's, and ``inspect.signature`` took ~0.5 ms of a pool process's CPU per task (bench row 4).
    A bound method is the same key each time it is looked up (equal and hashed by its function
    and instance)."""
    return inspect.signature(fn)


def problem(
    fn: Callable[..., Any], args: object, kwargs: object, *, leading: int = 0
) -> str | None:
    """Why the message's arguments do not fit ``fn`` (after ``leading`` arguments the worker
    supplies itself), or None when they do."""
    if not isinstance(args, list | tuple):
        return f"the message's args must be a list, not {type(args).__name__}"
    if not isinstance(kwargs, dict):
        return f"the message's kwargs must be a mapping, not {type(kwargs).__name__}"
    try:
        _signature(fn).bind(*([None] * leading), *args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None


def reject(
    ctx: Ctx,
    name: str,
    task_id: str,
    args: object,
    kwargs: object,
    reason: str,
    *,
    count: bool,
) -> str | None:
    """End a message that does not fit its task: ``INVALID_INPUT`` under the job id it names,
    announced to its ``notify_url``; returns that job id, or None when no record was made.
    ``count``: count and log it if nobody can be told (once per message: see the module)."""
    given = kwargs if isinstance(kwargs, dict) else {}
    jid = _job_id(task_id, given.get("job_id"))
    url = _notify_url(given.get("notify_url"))
    if name in CALLER_TASKS and jid is not None:
        exc = errors.InvalidInput(f"{name} called with arguments that do not fit: {reason}")
        steps.reject(ctx, steps.Delivery(name, task_id), jid, exc, url)
        if url is None and count:
            _unannounced("no_notify_url", name, task_id, reason)
        return jid
    if count:
        _unannounced("no_job_id" if name in CALLER_TASKS else "internal", name, task_id, reason)
    return None


def _job_id(task_id: str, job_id: object) -> str | None:
    try:
        return validation.job_id(task_id if job_id is None else job_id)
    except errors.InvalidInput:
        return None


def _notify_url(url: object) -> str | None:
    try:
        return validation.notify_url(url)
    except errors.InvalidInput:
        return None


def _unannounced(why: str, name: str, task_id: str, reason: str) -> None:
    metrics.unusable_message(why)
    log.error(
        "%s message %s dropped: its arguments do not fit (%s), and it names no %s to tell",
        name,
        task_id,
        reason,
        {"no_job_id": "usable job id", "no_notify_url": "usable notify_url"}.get(why, "caller"),
    )


class CheckedTask(RedactedTask):
    """Our tasks' class: a message whose arguments do not fit the task ends through
    :func:`reject` instead of a ``TypeError`` inside Celery."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task, or reject a message whose arguments do not fit it."""
        request = self.request
        # The message as sent (Celery's tracer has already spread args into the call).
        raw_args, raw_kwargs = (
            (args, kwargs) if request.called_directly else (request.args, request.kwargs)
        )
        reason = problem(self.run, raw_args, raw_kwargs)
        if reason is not None:
            ok = containers_ok(raw_args, raw_kwargs)
            ctx = runtime.context()
            jid = reject(ctx, self.name, request.id or "", raw_args, raw_kwargs, reason, count=ok)
            return jid or ""
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        # The tracer has pushed this message's request already; Task.__call__ would push a
        # second one without its id.
        return self.run(*args, **kwargs)
