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
INVALID_URL = "<invalid url>"


def redact_url(url: object) -> str:
    """Scheme and host (with a valid port) only, and ``/…`` when anything followed them.

    A token can hide in the credentials, the query, the fragment and the path alike (Slack- and
    Discord-style hook URLs carry it as a path segment), so none of them is shown. Never raises:
    a value that is no URL, or has a bad port, still gets a text.
    """
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
    except Exception:  # a repr must never fail the publish or the event
        return INVALID_URL
    if not parts.scheme or not host:
        return INVALID_URL
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # "host:99999", "host:abc": the host is still worth showing
        port = None
    if port is not None:
        host = f"{host}:{port}"
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme.lower()}://{host}{rest}"


def short(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        return value[:MAX_TEXT_CHARS] + "…"
    return value


def _shown(value: object) -> object:
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return redact_url(value)
    return short(value)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """``kwargsrepr`` for ``apply_async``: URLs cut to scheme and host, long text cut,
    internals hidden."""
    shown: dict[str, object] = {}
    for key, value in kwargs.items():
        if value is None or key in ("lease", "accepted"):  # internal: a token, an answer
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
