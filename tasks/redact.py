"""Short, secret-free text for task arguments as Flower and the logs show them."""

from __future__ import annotations

import urllib.parse
from typing import Any

# Flower's table stays readable, and a pasted novel does not fill the event stream.
MAX_TEXT_CHARS = 60
URL_KEYS = frozenset({"notify_url", "audio_url"})


def redact_url(url: str) -> str:
    """Keep scheme, host and path; drop credentials, query and fragment (where tokens hide)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    hidden = "?…" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + hidden


def short(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        return value[:MAX_TEXT_CHARS] + "…"
    return value


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """``kwargsrepr`` for ``apply_async``: URLs redacted, long text cut, internals hidden."""
    shown = {}
    for key, value in kwargs.items():
        if value is None or key == "lease":
            continue
        shown[key] = (
            redact_url(value) if key in URL_KEYS and isinstance(value, str) else short(value)
        )
    return repr(shown)
