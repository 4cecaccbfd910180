"""What Flower and task events show of a message: text cut short, URLs cut to their origin.

The worker redacts its own messages the same way (tasks/redact.py); a caller's ``notify_url``
may carry a token in its path or query, which must not land in every task event.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

# Enough to recognise a job in Flower, short enough that a page of text never lands in events.
TEXT_CHARS = 60
URL_KEYS = frozenset({"notify_url"})


def short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > TEXT_CHARS:
        return value[:TEXT_CHARS] + "…"
    return value


def origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}" if parts.scheme and host else "<invalid url>"


def args_repr(args: list[Any]) -> str:
    return repr([short(arg) for arg in args])


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    shown = {
        key: origin(value) if key in URL_KEYS and isinstance(value, str) else short(value)
        for key, value in kwargs.items()
    }
    return repr(shown)
