"""Type checks made at the call, before anything is sent: a message the worker cannot use
would otherwise fail far away, in a worker log or a webhook, long after the mistake.

Values (an empty text, a bad URL) are the worker's to judge: it ends such a job as
``INVALID_INPUT`` with a webhook, as for any bad input. Only types are checked here.
"""

from __future__ import annotations

from typing import Any


def text(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` must be a str (or None when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str{' or None' if optional else ''}, not {_kind(value)}")


def number(name: str, value: Any) -> None:
    """``value`` must be an int or a float, or None. A bool is refused although Python counts
    it as an int: ``speed=True`` is a mistake, not 1.0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or None, not {_kind(value)}")


def flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {_kind(value)}")


def _kind(value: Any) -> str:
    return type(value).__name__
