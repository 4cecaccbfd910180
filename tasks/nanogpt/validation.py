"""Checks on task arguments. Bad input raises :class:`errors.InvalidInput` with a clear message.

Task arguments arrive as JSON from apps that do not import this code, so every type is checked
here rather than trusted.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar

from tasks.errors import InvalidInput
from tasks.record.jobs import Priority

# NanoGPT bills per character; a cap keeps a runaway caller from paying for a novel and keeps
# broker messages small.
MAX_TEXT_CHARS = 20_000
# Long enough for UUIDs and upstream run ids, short enough for Redis keys and log lines.
MAX_ID_CHARS = 128
# Browsers and most proxies stop at about this length.
MAX_URL_CHARS = 2_048
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
# A tenant is a short name: it labels metrics and names a lane in the releaser's Redis hash.
MAX_TENANT_CHARS = 64
# C0 and C1 control characters and DEL: refused in names and ids, which terminals (the CLI's
# status lines), logs and headers print as they are.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def require_str(name: str, value: object, *, max_chars: int = MAX_ID_CHARS) -> str:
    """A non-empty string of at most ``max_chars`` characters that UTF-8 can encode (Redis,
    JSON and HTTP all need it: a lone surrogate would fail there, after the job was taken)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode text") from None
    return value


def require_name(name: str, value: object, *, max_chars: int = MAX_ID_CHARS) -> str:
    """Like :func:`require_str`, and without control characters (models, voices, ids)."""
    text = require_str(name, value, max_chars=max_chars)
    if CONTROL.search(text):
        raise InvalidInput(f"{name} must not contain control characters")
    return text


def optional_str(name: str, value: object, *, max_chars: int = 1_000) -> str | None:
    if value is None:
        return None
    return require_str(name, value, max_chars=max_chars)


def optional_name(name: str, value: object, *, max_chars: int = 200) -> str | None:
    if value is None:
        return None
    return require_name(name, value, max_chars=max_chars)


def optional_number(
    name: str, value: object, *, low: float | None = None, high: float | None = None
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float, e.g. 10**400
        raise InvalidInput(f"{name} is out of range") from None
    if (
        number != number
        or (low is not None and number < low)
        or (high is not None and number > high)
    ):
        if high is None:
            raise InvalidInput(f"{name} must be at least {low}")
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return number


def job_id(value: object) -> str:
    """A caller-chosen job id: letters, digits and ``._:-``, at most 128 characters."""
    text = require_str("job_id", value)
    if not JOB_ID_PATTERN.fullmatch(text):  # fullmatch: "$" would let a final newline through
        raise InvalidInput("job_id may hold only letters, digits and . _ : -")
    return text


def tenant(value: object) -> str | None:
    """Who sent the job (None: nobody said): letters, digits and ``._:-``, at most
    :data:`MAX_TENANT_CHARS` characters."""
    if value is None:
        return None
    text = require_str("tenant", value, max_chars=MAX_TENANT_CHARS)
    if not JOB_ID_PATTERN.fullmatch(text):
        raise InvalidInput("tenant may hold only letters, digits and . _ : -")
    return text


def priority(value: object) -> Priority:
    """How urgent the job is: ``interactive``, ``normal`` (the default) or ``bulk``."""
    if value is None:
        return Priority.NORMAL
    if not isinstance(value, str) or value not in Priority.__members__.values():
        allowed = ", ".join(p.value for p in Priority)
        raise InvalidInput(f"priority must be one of {allowed}")
    return Priority(value)


@dataclass(frozen=True)
class Lane:
    """Who sent a job and how urgent it is, validated (``tenant`` and ``priority``)."""

    tenant: str | None = None
    priority: Priority = Priority.NORMAL

    def fields(self) -> dict[str, str | None]:
        """The record's fields for it; a default lane writes none, as before issue 22."""
        fields: dict[str, str | None] = {"tenant": self.tenant}
        if self.priority != Priority.NORMAL:
            fields["priority"] = self.priority.value
        return fields


def lane(tenant_: object, priority_: object) -> Lane:
    """Validate ``tenant`` and ``priority`` of ``tts.submit_tts`` / ``tts.poll_tts``."""
    return Lane(tenant(tenant_), priority(priority_))


def notify_url(value: object) -> str | None:
    """An absolute http(s) URL; whether its host is allowed is decided when it is called."""
    if value is None:
        return None
    url = require_name("notify_url", value, max_chars=MAX_URL_CHARS)
    try:
        parts = urllib.parse.urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises for a bad one
    except ValueError:  # "https://[::1/": an unclosed IPv6 bracket, a port that is no number
        raise InvalidInput("notify_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("notify_url must be an absolute http(s) URL")
    return url


@dataclass(frozen=True)
class SubmitRequest:
    """The body of one ``POST /api/tts``, validated."""

    text: str
    model: str
    voice: str | None = None
    speed: float | None = None
    response_format: str | None = None
    instructions: str | None = None
    stability: float | None = None
    similarity_boost: float | None = None
    style: float | None = None
    # Steers the worker, never sent: whether an identical request's audio may answer this one
    # (TTS_REUSE_TTL; tasks/steps/reuse.py).
    reuse: bool = True

    #: The fields that steer the worker and are not part of NanoGPT's body.
    LOCAL: ClassVar[frozenset[str]] = frozenset({"reuse"})

    def body(self) -> dict[str, Any]:
        """The JSON body, without the fields the caller left out (nor the worker's own)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and k not in self.LOCAL}

    def steering(self) -> dict[str, Any]:
        """The worker's own fields that differ from their defaults, as the message's keyword
        arguments (a re-sent submit carries them; a default one stays as callers sent it)."""
        return {} if self.reuse else {"reuse": False}


def submit_request(
    text: object,
    model: object,
    *,
    voice: object = None,
    speed: object = None,
    response_format: object = None,
    instructions: object = None,
    stability: object = None,
    similarity_boost: object = None,
    style: object = None,
    reuse: object = True,
) -> SubmitRequest:
    """Validate ``tts.submit_tts`` arguments."""
    if not isinstance(reuse, bool):
        raise InvalidInput("reuse must be true or false")
    return SubmitRequest(
        text=require_str("text", text, max_chars=MAX_TEXT_CHARS),
        model=require_name("model", model),
        voice=optional_name("voice", voice, max_chars=200),
        speed=optional_number("speed", speed, low=0.25, high=4.0),
        response_format=optional_name("response_format", response_format, max_chars=20),
        instructions=optional_str("instructions", instructions, max_chars=MAX_TEXT_CHARS),
        stability=optional_number("stability", stability, low=0.0, high=1.0),
        similarity_boost=optional_number("similarity_boost", similarity_boost, low=0.0, high=1.0),
        style=optional_number("style", style, low=0.0, high=1.0),
        reuse=reuse,
    )


@dataclass(frozen=True)
class PollRequest:
    """``tts.poll_tts`` arguments, validated: what the status endpoint is asked with."""

    run_id: str
    model: str
    cost: float | None
    payment_source: str | None
    is_api_request: bool


def poll_request(
    run_id: object, model: object, *, cost: object, payment_source: object, is_api_request: object
) -> PollRequest:
    """Validate ``tts.poll_tts`` arguments."""
    if not isinstance(is_api_request, bool):
        raise InvalidInput("is_api_request must be true or false")
    return PollRequest(
        run_id=require_name("run_id", run_id),
        model=require_name("model", model),
        cost=optional_number("cost", cost, low=0.0),
        payment_source=optional_name("payment_source", payment_source, max_chars=50),
        is_api_request=is_api_request,
    )
