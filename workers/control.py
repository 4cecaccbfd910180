"""Inspect replies that list task requests carry redacted argument text, as events do.

Celery's ``scheduled`` and ``reserved`` inspect commands (and ``active`` unless called with
``safe``) answer with each request's real arguments. Flower calls them for its worker page and
for ``/api/workers?workername=...``, and a held countdown poll carries its job's ``notify_url``,
query token included. :func:`register` wraps the three commands in place, keeping Celery's own
logic and metadata, so every reply shows the text :mod:`tasks.redact` makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.control import Panel

from tasks import redact

COMMANDS = ("scheduled", "reserved", "active")
_MARK = "_tts_redacted"

Command = Callable[..., Any]


def redact_info(info: dict[str, Any]) -> dict[str, Any]:
    """A request's ``info()`` dict with ``args``/``kwargs`` as redacted text."""
    shown = dict(info)
    args, kwargs = info.get("args"), info.get("kwargs")
    if isinstance(args, list | tuple):
        shown["args"] = redact.args_repr(args)
    if isinstance(kwargs, dict):
        shown["kwargs"] = redact.kwargs_repr(kwargs)
    return shown


def _redact_entry(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    if isinstance(entry.get("request"), dict):  # ``scheduled``: {eta, priority, request}
        return {**entry, "request": redact_info(entry["request"])}
    return redact_info(entry)


def _wrap(original: Command) -> Command:
    def command(state: Any, **kwargs: Any) -> Any:
        reply = original(state, **kwargs)
        return [_redact_entry(e) for e in reply] if isinstance(reply, list) else reply

    command.__doc__ = original.__doc__
    setattr(command, _MARK, True)
    return command


def register() -> None:
    """Replace the three commands in Celery's registry with redacting wrappers (idempotent)."""
    for name in COMMANDS:
        original = Panel.data[name]
        if getattr(original, _MARK, False):
            continue
        wrapped = _wrap(original)
        # Celery dispatches through this dict (its metadata in Panel.meta stays as it is).
        Panel.data[name] = wrapped
        alias = Panel.meta[name].alias
        if alias:
            Panel.data[alias] = wrapped
