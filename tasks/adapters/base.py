"""The Task class of our app: whatever our processes publish carries redacted argument text.

Celery puts ``argsrepr``/``kwargsrepr`` in every message and in the ``task-sent`` event that
Flower stores; by default they are ``saferepr`` of the real arguments, up to 1 KiB each, with
every ``notify_url`` query token. Internal publishes pass their own text already; this class
covers the ones that do not, above all ``Task.retry``, which re-sends the request's arguments.
Every publish through it has a timeout too (:func:`tasks.config.celery_config.publish_options`).
"""

from __future__ import annotations

from typing import Any

from celery import Task

from tasks import redact
from tasks.config import celery_config


class RedactedTask(Task):  # type: ignore[type-arg]
    """A :class:`celery.Task` whose :meth:`apply_async` fills in redacted argument text."""

    def apply_async(  # type: ignore[override]
        self,
        args: Any = None,
        kwargs: Any = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        """As :meth:`celery.Task.apply_async`, with a publish timeout (a RabbitMQ in alarm
        would hold a confirm-mode publish for as long as the alarm lasts); an explicit
        ``argsrepr``/``kwargsrepr`` or timeout wins."""
        for option, value in celery_config.publish_options().items():
            options.setdefault(option, value)
        if options.get("argsrepr") is None:
            options["argsrepr"] = redact.args_repr(tuple(args or ()))
        if options.get("kwargsrepr") is None:
            options["kwargsrepr"] = redact.kwargs_repr(dict(kwargs or {}))
        return super().apply_async(args, kwargs, *rest, **options)
