"""A record for every job the moment a worker receives its first message.

Apps send ``tts.submit_tts`` and ``tts.poll_tts`` by name; until the task runs, nothing but the
message knows of the job. A worker that is SIGKILLed (or loses Redis) while such messages sit
prefetched in its memory leaves them in kombu's ``unacked`` hash, which gives them back only
after the visibility timeout (an hour, because countdowns still wait in the broker on the Redis
transport). So the worker's consumer records each job as it receives the message, with the same
code the task runs first (:func:`tasks.steps.accept_submit`, :func:`tasks.steps.accept_poll`),
and puts it on the reconciler's watch: if the message has not started within
``TTS_RECOVERY_GRACE``, the reconciler sends it again under its own task id. Messages of our
own (a poll carrying a lease, a download, a webhook) need nothing: their job has a record.

Why this rather than a short visibility timeout or a reaper of dead workers' reservations: it
costs one Redis call for the first message of a job only (none for the polls that make up most
traffic), it needs no liveness protocol between workers, it survives a Redis restart with the
record (AOF), and a copy that turns up late meets the job's guards like any duplicate.

A ``tts.cancel`` acts on receipt: the worker that takes it ends the job there and then (the
cancel step, one first-writer-wins settle), instead of holding it behind the tasks ahead of it
in its pool. A worker SIGKILLed while holding the message therefore has already cancelled the
job; the task, when it runs (here or after a redelivery), finds the job ended. A cancel sent
with a countdown waits for its time like any task.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from tasks import errors, names, steps
from tasks.adapters import misfit
from tasks.nanogpt import validation
from tasks.steps import accept
from tasks.steps.context import Ctx

log = logging.getLogger(__name__)


@functools.cache
def _signature(step: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(step)


def _bound(step: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The message's arguments by name, as the step (after its ctx and delivery) would take
    them; None when they do not fit (:mod:`tasks.adapters.misfit` ends such a message)."""
    try:
        bound = _signature(step).bind(None, None, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _unused(*_: Any, **__: Any) -> None:
    """A signature anything fits: for :func:`misfit.problem` on the message's containers."""


def eta_s(eta: object) -> float | None:
    """A message's ETA (a datetime, or the ISO text its headers carry) in epoch seconds."""
    if isinstance(eta, datetime.datetime):
        return eta.timestamp()
    if isinstance(eta, str) and eta:
        return datetime.datetime.fromisoformat(eta).timestamp()
    return None


def on_received(
    ctx: Ctx,
    name: str,
    task_id: str,
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    start_at: float | None = None,
) -> str | None:
    """Record the job a caller's message starts, if it is new; returns its job id, or None for
    a message that needs no record. ``start_at``: the message's ETA (epoch seconds), if any.

    Bad arguments are recorded as the task itself would (``INVALID_INPUT``, announced), so a
    worker that dies before running the message loses nothing either.
    """
    if name in names.QUEUES and not misfit.containers_ok(args, kwargs):
        # Celery's tracer refuses these before the task could: counted here.
        reason = misfit.problem(_unused, args, kwargs) or "unusable arguments"
        return misfit.reject(ctx, name, task_id, args, kwargs, reason, count=True)
    if name == names.CANCEL:
        return _cancel(ctx, task_id, args, kwargs, start_at=start_at)
    if name not in (names.SUBMIT_TTS, names.POLL_TTS):
        return None
    if name == names.POLL_TTS and kwargs.get("lease") is not None:
        return None  # a poll of our own (most messages): its job has a record; no binding
    d = steps.Delivery(name, task_id)
    step = steps.submit if name == names.SUBMIT_TTS else steps.poll
    given = _bound(step, args, kwargs)
    if given is None:
        # Recorded and announced now, like any bad input; the task counts it when it runs.
        reason = misfit.problem(step, args, kwargs, leading=2) or "unusable arguments"
        return misfit.reject(ctx, name, task_id, args, kwargs, reason, count=False)
    try:
        url = validation.notify_url(given["notify_url"])
        lane = validation.lane(given["tenant"], given["priority"])
        if name == names.SUBMIT_TTS:
            jid = accept.job_identity(d, given["job_id"])
            fields = dataclasses.fields(validation.SubmitRequest)
            request = validation.submit_request(**{f.name: given[f.name] for f in fields})
            steps.accept_submit(ctx, jid, request, url, owner=task_id, start_at=start_at, lane=lane)
        else:
            run_id = given["run_id"]
            jid = validation.job_id(run_id if given["job_id"] is None else given["job_id"])
            poll = validation.poll_request(
                run_id,
                given["model"],
                cost=given["cost"],
                payment_source=given["payment_source"],
                is_api_request=given["is_api_request"],
            )
            steps.accept_poll(ctx, jid, poll, url, owner=task_id, start_at=start_at, lane=lane)
    except errors.InvalidInput as exc:
        return steps.reject(ctx, d, given["job_id"], exc, given["notify_url"])
    return jid


def _cancel(
    ctx: Ctx,
    task_id: str,
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    start_at: float | None,
) -> str | None:
    """Run the cancel a worker has just received; returns the job id it named, or None when
    it named none or is for later (``start_at`` ahead: the task acts when it runs)."""
    if start_at is not None and start_at > ctx.clock():
        return None
    given = _bound(steps.cancel, args, kwargs)
    if given is None or not isinstance(given["job_id"], str):
        return None  # the task reports the bad call when it runs
    jid: str = given["job_id"]
    said = steps.cancel(ctx, steps.Delivery(names.CANCEL, task_id), jid)
    log.info("tts.cancel %s acted on receipt: %s", task_id, said)
    return jid
