"""The one boundary where ``requests`` exceptions and HTTP statuses become project errors."""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import ssl
import time
from collections.abc import Iterator

import requests
import urllib3
from requests_hardened.ip_filter import InvalidIPAddress

from tasks import errors

# Upstream messages are echoed into outcomes and logs; cap them so a gateway page stays readable.
MAX_MESSAGE_CHARS = 300
# A day: no real server asks a client to wait longer; a larger Retry-After is a bug or an attack.
MAX_RETRY_AFTER_S = 86_400.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None.

    A time already past means 0. A value that is no number or date, is not finite (``inf``,
    ``nan``, ``1e400``) or asks for more than :data:`MAX_RETRY_AFTER_S` counts as absent, so
    no job is ever given an infinite or absurd due time.
    """
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until_date(value, now=now)
    if seconds is None or not math.isfinite(seconds) or seconds > MAX_RETRY_AFTER_S:
        return None
    return max(0.0, seconds)


def _seconds_until_date(value: str, *, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return when.timestamp() - (time.time() if now is None else now)


# An X-Request-ID is an opaque id: visible ASCII, short. Anything else is not kept.
REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


def request_id(response: requests.Response) -> str | None:
    """NanoGPT's ``X-Request-ID`` of an answer, if it has a usable one."""
    value = (response.headers.get("X-Request-ID") or "").strip()
    return value if REQUEST_ID_RE.fullmatch(value) else None


def upstream_message(response: requests.Response) -> str:
    """A short human message from an error answer: its JSON ``error`` or the start of its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:MAX_MESSAGE_CHARS]
    text = response.text.strip().replace("\n", " ") if response.text else ""
    return (text or response.reason or f"HTTP {response.status_code}")[:MAX_MESSAGE_CHARS]


def raise_for_status(response: requests.Response, *, what: str) -> None:
    """Raise the project error that a non-2xx answer from NanoGPT means; return on 2xx.

    The error's message names the answer's ``X-Request-ID``."""
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        _raise_for(response, status, what=what)
    except errors.TTSError as exc:
        raise exc.with_request_id(request_id(response)) from None


def _raise_for(response: requests.Response, status: int, *, what: str) -> None:
    message = f"{what}: HTTP {status}: {upstream_message(response)}"
    if 300 <= status < 400:  # never followed (tasks/nanogpt/client.py): the key stays with NanoGPT
        raise errors.UpstreamFailed(
            f"{what}: HTTP {status} redirect, not followed", code=errors.InvalidResponse.code
        )
    if status in (401, 403):
        raise errors.AuthFailed(message)
    if status == 402:  # {"error": "Insufficient balance"}: only a top-up helps
        raise errors.InsufficientBalance(message)
    if status == 404:
        raise errors.NotFound(message)
    if status == 429:
        retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
        raise errors.RateLimited(message, retry_after_s=retry_after_s)
    if status in (408, 425) or status >= 500:
        raise errors.UpstreamUnavailable(message)
    if status in (400, 413, 422):
        raise errors.InvalidInput(message)
    raise errors.UpstreamFailed(message)


def never_sent(exc: BaseException) -> bool:
    """Whether a failed request provably never reached the server: no connection was made
    (refused, unresolvable, connect timeout) or the server's certificate was refused. A read
    timeout, a connection cut or any other TLS error (urllib3 raises the same ``SSLError`` for
    a broken record in the answer, after the server has the whole request) may have been acted
    on."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or not exc.args:
        return False
    reason = getattr(exc.args[0], "reason", None)  # urllib3's MaxRetryError
    if isinstance(reason, urllib3.exceptions.SSLError):
        return any(isinstance(a, ssl.SSLCertVerificationError) for a in reason.args)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


@contextlib.contextmanager
def mapped(what: str, *, transient: type[errors.TransientError]) -> Iterator[None]:
    """Turn ``requests`` exceptions raised inside the block into project errors.

    ``transient`` is the class for faults worth retrying (a timeout, a reset connection): an
    upstream API call maps them to ``UpstreamUnavailable``, a download to ``DownloadInterrupted``.

    The boundary for callers' URLs: a ``requests`` error quotes the whole URL (a notify URL's
    token, a presigned audio URL's signature), so the project error names only the kind of fault
    and is raised ``from None``. The chain would otherwise go with it into every traceback
    Celery formats: task-retried and task-failed events (Flower) and the result backend.
    """
    try:
        yield
    except InvalidIPAddress as exc:
        raise errors.UnsafeUrl(f"{what}: address {exc} is not allowed") from None
    except requests.exceptions.InvalidURL:
        raise errors.UnsafeUrl(f"{what}: invalid URL") from None
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise transient(f"{what}: {type(exc).__name__}") from None
    except requests.exceptions.ChunkedEncodingError:
        raise transient(f"{what}: connection cut mid-body") from None
    except requests.RequestException as exc:
        raise transient(f"{what}: {type(exc).__name__}") from None
    except urllib3.exceptions.HTTPError as exc:  # raw reads (tasks.audio.storage) are not wrapped
        raise transient(f"{what}: {type(exc).__name__}") from None
