"""What the NanoGPT simulator answers, decided without any HTTP: scenarios, directives, run state.

A test (or a demo run through the real worker) steers the simulator by putting one directive in the
text it submits, e.g. ``"Hello [[sim pending=3 outcome=content_policy status_fail=503,429:2]]"``.
The directive overrides fields of the simulator's default :class:`Scenario`; anything malformed is
a :class:`ValueError` whose message names the offending key, so a typo never silently falls back to
the happy path.

Failure vocabulary (``status_fail`` / ``submit_fail``, one answer per request)::

    500  503  502html  401  402  403  404  400  malformed  429:<retry_after_s>  slow:<seconds>

(402 is NanoGPT's ``{"error": "Insufficient balance"}``.) A status word the docs do not list
(``cancelled``, ``expired``, a new intermediate word) is answered with ``pending_status=<word>``:
every pending answer carries it, so ``pending=1 pending_status=cancelled`` ends the run there.

(``429:<retry_after_s>`` sends the number as written: ``429:1e400`` sends ``Retry-After: 1e400``.)

Audio vocabulary (``audio``)::

    wav  not_audio  hang  large:<n_bytes>  drip:<seconds_per_chunk>

``gen_s=<seconds>`` puts the run in the simulator's shared :class:`UpstreamQueue` instead: it
waits behind earlier runs for a free generator, reports its place in that line as
``queuePosition`` (so positions move as the jobs ahead finish; 0 while it generates), and
completes ``gen_s`` after it started. The benchmarks use it for workloads where queue positions
mean something. ``latency=<seconds>`` delays every status answer of the run by that long.

:class:`Run` is one job's state machine (injected failures, then pending polls, then the outcome);
:mod:`workers.simulator` only carries its answers over HTTP.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.sample_audio import WAV_HEADER_BYTES, make_wav, wav_header

MODES = ("async", "sync_json", "sync_bytes")
OUTCOMES = ("completed", "error", "content_policy", "completed_no_url")
PLAIN_FAILURES = ("500", "503", "502html", "401", "402", "403", "404", "400", "malformed")
PLAIN_AUDIO = ("wav", "not_audio", "hang")
GENERIC_ERROR = "TTS generation failed. Please try again."
CONTENT_POLICY_ERROR = "Content rejected by provider. Please modify your prompt and try again."
JSON_TYPE = "application/json"
GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
    b"</center><hr><center>cloudflare</center></body></html>"
)
NOT_AUDIO_BODY = b"<!doctype html><html><body><h1>Welcome!</h1><p>Sign in</p></body></html>"
SYNC_DURATION_S = 0.4  # what sync_json reports; the length of the default sample WAV
TRUNCATED_JSON = b'{"status": "pen'  # what a connection cut mid-body looks like to a JSON parser
_FAILURE_ERRORS: dict[str, tuple[int, str]] = {
    "500": (500, "Internal server error"),
    "503": (503, "Service temporarily unavailable"),
    "401": (401, "Invalid API key"),
    "402": (402, "Insufficient balance"),
    "403": (403, "Forbidden"),
    "404": (404, "Run not found"),
    "400": (400, "Bad request"),
    "429": (429, "Rate limit exceeded"),
}

# Non-greedy up to the first "]]" so that ordinary brackets elsewhere in the text are left alone.
_DIRECTIVE_RE = re.compile(r"\[\[sim(?:\s+(?P<body>.*?))?\s*\]\]", re.DOTALL)


@dataclass(frozen=True)
class Scenario:
    """What the simulator answers for one run; every field is validated on construction."""

    mode: str = "async"
    pending_polls: int = 2
    pending_s: float = 0.0
    queue_position: int | None = 3
    pending_status: str = "pending"
    outcome: str = "completed"
    status_failures: tuple[str, ...] = ()
    submit_failures: tuple[str, ...] = ()
    audio: str = "wav"
    audio_url: str | None = None
    audio_redirect_to: str | None = None
    cost: float = 0.05
    payment_source: str = "USD"
    # Seconds of generation in the shared upstream queue; None: pending_polls, pending_s and
    # queue_position decide, as for a run of its own.
    gen_s: float | None = None
    # Seconds every status request waits before its answer: an internet round trip, for
    # measuring how a worker pool copes with an upstream that is slow to answer, not to finish.
    status_latency_s: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("outcome", self.outcome, OUTCOMES)
        if self.pending_polls < 0:
            raise ValueError(f"pending_polls must be >= 0, got {self.pending_polls!r}")
        _check_seconds("pending_s", self.pending_s)
        if self.queue_position is not None and self.queue_position < 0:
            raise ValueError(f"queue_position must be >= 0 or None, got {self.queue_position!r}")
        if not self.pending_status:
            raise ValueError("pending_status must not be empty")
        for spec in (*self.status_failures, *self.submit_failures):
            validate_failure(spec)
        validate_audio(self.audio)
        if not math.isfinite(self.cost) or self.cost < 0:
            raise ValueError(f"cost must be a finite number >= 0, got {self.cost!r}")
        if not self.payment_source:
            raise ValueError("payment_source must not be empty")
        if self.gen_s is not None:
            _check_seconds("gen_s", self.gen_s)
        _check_seconds("status_latency_s", self.status_latency_s)


def validate_failure(spec: str) -> None:
    """Raise ValueError unless `spec` is one entry of the failure vocabulary."""
    kind, colon, arg = spec.partition(":")
    if kind in PLAIN_FAILURES and not colon:
        return
    if kind == "429" and colon:
        # Whole seconds as NanoGPT would send them, or any number a hostile or broken server
        # might (429:1e400, 429:nan): the header carries the text as written.
        try:
            float(arg)
        except ValueError:
            raise ValueError(
                f"failure {spec!r}: Retry-After must be a number, e.g. 429:2"
            ) from None
        return
    if kind == "slow" and colon:
        _check_seconds(f"failure {spec!r}", _to_float(arg, f"failure {spec!r}"))
        return
    known = ", ".join((*PLAIN_FAILURES, "429:<retry_after_s>", "slow:<seconds>"))
    raise ValueError(f"unknown failure {spec!r}; expected one of {known}")


def validate_audio(spec: str) -> None:
    """Raise ValueError unless `spec` is one entry of the audio vocabulary."""
    kind, colon, arg = spec.partition(":")
    if kind in PLAIN_AUDIO and not colon:
        return
    if kind == "large" and colon:
        if not arg.isdigit() or int(arg) < WAV_HEADER_BYTES:
            raise ValueError(f"audio {spec!r}: size must be whole bytes >= {WAV_HEADER_BYTES}")
        return
    if kind == "drip" and colon:
        _check_seconds(f"audio {spec!r}", _to_float(arg, f"audio {spec!r}"))
        return
    known = ", ".join((*PLAIN_AUDIO, "large:<n_bytes>", "drip:<seconds_per_chunk>"))
    raise ValueError(f"unknown audio {spec!r}; expected one of {known}")


def parse_directives(text: str, base: Scenario) -> Scenario:
    """Return `base` with the overrides of the one ``[[sim key=value ...]]`` block in `text`.

    Text without a directive gives `base` unchanged.

    Raises:
        ValueError: more than one directive, an unknown or repeated key, a token that is not
            ``key=value``, or a value the key does not accept.
    """
    matches = list(_DIRECTIVE_RE.finditer(text))
    if not matches:
        return base
    if len(matches) > 1:
        raise ValueError("[[sim]] directive: only one [[sim ...]] block is allowed per text")
    changes: dict[str, Any] = {}
    for token in (matches[0].group("body") or "").split():
        key, equals, value = token.partition("=")
        if not equals:
            raise ValueError(f"[[sim]] directive: expected key=value, got {token!r}")
        if key not in _KEYS:
            raise ValueError(
                f"[[sim]] directive: unknown key {key!r}; known keys: {', '.join(_KEYS)}"
            )
        field_name, convert = _KEYS[key]
        if field_name in changes:
            raise ValueError(f"[[sim]] directive: key {key!r} given twice")
        try:
            changes[field_name] = convert(value)
        except ValueError as exc:
            raise ValueError(f"[[sim]] directive: bad value for {key!r}: {exc}") from exc
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise ValueError(f"[[sim]] directive: {exc}") from exc


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as data: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def json_answer(status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """An Answer whose body is `obj` as JSON."""
    return Answer(status, json.dumps(obj).encode(), JSON_TYPE, headers)


def failure_answer(spec: str) -> Answer | None:
    """The answer for an injected failure; None for ``slow:<s>``, which answers normally later."""
    kind, _, arg = spec.partition(":")
    if kind == "slow":
        return None
    if kind == "502html":
        return Answer(502, GATEWAY_PAGE, "text/html")
    if kind == "malformed":
        return Answer(200, TRUNCATED_JSON, JSON_TYPE)
    status, message = _FAILURE_ERRORS[kind]
    headers = (("Retry-After", arg),) if kind == "429" else ()
    return json_answer(status, {"error": message}, headers)


@dataclass
class Run:
    """One job's state; the simulator calls the methods with its lock held."""

    run_id: str
    model: str
    scenario: Scenario
    created_at: float  # time.monotonic(), the clock pending_s is measured on
    status_requests: int = 0  # every status request, failures included
    pending_answers: int = 0  # pending answers given so far; drives queuePosition
    finished: bool = False  # once the outcome is given it never changes
    # For a run in the shared upstream queue (Scenario.gen_s): its place in arrival order and
    # when its generation ends (on the created_at clock). None otherwise.
    queue_index: int | None = None
    ends_at: float | None = None

    def ticket(self) -> dict[str, Any]:
        """The 202 answer of an async submit."""
        scenario = self.scenario
        return {
            "status": "pending",
            "runId": self.run_id,
            "model": self.model,
            "cost": scenario.cost,
            "paymentSource": scenario.payment_source,
        }

    def sync_body(self, text: str, voice: Any, speed: Any, audio_url: str) -> dict[str, Any]:
        """The 200 JSON answer of a sync_json submit."""
        return {
            "audioUrl": audio_url,
            "contentType": "audio/wav",
            "model": self.model,
            "text": text,
            "voice": voice,
            "speed": speed,
            "duration": SYNC_DURATION_S,
            "cost": self.scenario.cost,
            "currency": "USD",
        }

    def take_status_failure(self) -> str | None:
        """Count one status request; return the failure it must get, if any."""
        index = self.status_requests
        self.status_requests += 1
        failures = self.scenario.status_failures
        return failures[index] if index < len(failures) else None

    def status_body(
        self, now: float, audio_url: str, *, position: int | None = None
    ) -> dict[str, Any]:
        """The JSON for a normal status answer at monotonic time `now`.

        ``position``: for a run in the shared upstream queue, its place in the waiting line.
        """
        scenario = self.scenario
        if not self.finished:
            if self.ends_at is not None:
                pending = now < self.ends_at
            else:
                waited_s = now - self.created_at
                pending = self.pending_answers < scenario.pending_polls
                pending = pending or waited_s < scenario.pending_s
            if pending:
                body: dict[str, Any] = {"status": scenario.pending_status, "runId": self.run_id}
                if position is not None:
                    body["queuePosition"] = position
                elif scenario.queue_position is not None:
                    body["queuePosition"] = max(0, scenario.queue_position - self.pending_answers)
                self.pending_answers += 1
                return body
            self.finished = True
        if scenario.outcome == "error":
            return {"status": "error", "error": GENERIC_ERROR}
        if scenario.outcome == "content_policy":
            code = "CONTENT_POLICY_VIOLATION"
            return {"status": "error", "code": code, "error": CONTENT_POLICY_ERROR}
        body = {"status": "completed", "contentType": "audio/wav", "model": self.model}
        if scenario.outcome == "completed":
            body["audioUrl"] = audio_url
        return body


@dataclass(frozen=True)
class Slot:
    """Where a run landed in the upstream queue: its arrival index and its generation window."""

    index: int
    starts_at: float
    ends_at: float


class UpstreamQueue:
    """NanoGPT's own queue, modelled: one first-in-first-out line in front of ``slots`` generators.

    A run joins at the back when it is submitted, starts when a generator is free and every run
    ahead of it has started, and completes its ``gen_s`` later. Its queue position is its place
    in the waiting line (1: it starts next), 0 once it generates. Pure: callers pass the clock
    (any monotonic one, the same for every call); the simulator calls it under its lock.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"upstream slots must be >= 1, got {slots!r}")
        self.slots = slots
        self._free_at: list[float] = []  # heap: when each busy generator becomes free
        self._starts: list[float] = []  # start of every run in arrival order (non-decreasing)

    def admit(self, now: float, gen_s: float) -> Slot:
        """Queue a run submitted at ``now`` that needs ``gen_s`` seconds of generation."""
        starts_at = now
        if len(self._free_at) >= self.slots:
            starts_at = max(now, heapq.heappop(self._free_at))
        if self._starts:
            starts_at = max(starts_at, self._starts[-1])  # nobody overtakes the line
        heapq.heappush(self._free_at, starts_at + gen_s)
        self._starts.append(starts_at)
        return Slot(len(self._starts) - 1, starts_at, starts_at + gen_s)

    def position(self, index: int, now: float) -> int:
        """Run ``index``'s place in the waiting line at ``now``; 0 once it has started."""
        return index + 1 - bisect.bisect_right(self._starts, now, 0, index + 1)


def audio_body(spec: str) -> bytes:
    """The exact bytes served for audio `spec` ("hang": what it would serve if it ever did)."""
    kind, _, arg = spec.partition(":")
    if kind == "not_audio":
        return NOT_AUDIO_BODY
    if kind == "large":
        data_bytes = int(arg) - WAV_HEADER_BYTES
        return wav_header(data_bytes) + bytes(data_bytes)
    return make_wav()


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_seconds(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: seconds must be a finite number >= 0, got {value!r}")


def _to_float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a number") from None


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


def _float(value: str) -> float:
    return _to_float(value, "value")


def _queue(value: str) -> int | None:
    return None if value.lower() == "none" else _int(value)


def _spec_list(value: str) -> tuple[str, ...]:
    return tuple(item for item in value.split(",") if item)


def _text(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


# Directive key -> (Scenario field, converter); Scenario.__post_init__ then checks ranges.
_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "mode": ("mode", _text),
    "pending": ("pending_polls", _int),
    "pending_s": ("pending_s", _float),
    "queue": ("queue_position", _queue),
    "pending_status": ("pending_status", _text),
    "outcome": ("outcome", _text),
    "status_fail": ("status_failures", _spec_list),
    "submit_fail": ("submit_failures", _spec_list),
    "audio": ("audio", _text),
    "audio_url": ("audio_url", _text),
    "redirect": ("audio_redirect_to", _text),
    "cost": ("cost", _float),
    "payment_source": ("payment_source", _text),
    "gen_s": ("gen_s", _float),
    "latency": ("status_latency_s", _float),
}
