"""Short, secret-free text for task arguments as Flower and the logs show them."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

# Flower's table stays readable, and a pasted novel does not fill the event stream.
MAX_TEXT_CHARS = 60
# Whatever nesting a caller sends, one task's argument text stays one table row.
MAX_REPR_CHARS = 400
URL_KEYS = frozenset({"notify_url", "audio_url"})
# An argument no task of ours takes, but which a caller might send by mistake: never shown.
SECRET_KEY_RE = re.compile(r"key|secret|token|passw|auth", re.IGNORECASE)
HIDDEN = "<hidden>"


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


def _shown(value: object) -> object:
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return redact_url(value)
    return short(value)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """``kwargsrepr`` for ``apply_async``: URLs redacted, long text cut, internals hidden."""
    shown: dict[str, object] = {}
    for key, value in kwargs.items():
        if value is None or key == "lease":
            continue
        if SECRET_KEY_RE.search(str(key)):
            shown[key] = HIDDEN
        elif key in URL_KEYS and isinstance(value, str):
            shown[key] = redact_url(value)
        else:
            shown[key] = _shown(value)
    return _capped(repr(shown))


def args_repr(args: Sequence[Any]) -> str:
    """``argsrepr`` for positional arguments: long text cut, URLs redacted."""
    return _capped(repr([_shown(value) for value in args]))


def _capped(text: str) -> str:
    return text if len(text) <= MAX_REPR_CHARS else text[:MAX_REPR_CHARS] + "…"
