"""Pure parsing of NanoGPT's JSON answers into small typed values. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from tasks import errors

#: Status words that mean "still working". Any word neither list names is treated the same way
#: (it is more likely a new intermediate state than a failure), but logged as unexpected.
PENDING_STATUSES = frozenset({"pending", "queued", "processing", "running", "in_progress"})
#: Words that end a run with no audio, beside "error"/"failed": the job fails at once with
#: UPSTREAM_ERROR naming the word, instead of polling until its deadline.
TERMINAL_STATUSES = frozenset(
    {
        "cancelled",
        "canceled",
        "expired",
        "rejected",
        "failure",
        "timeout",
        "timed_out",
        "aborted",
        "refunded",
        "deleted",
    }
)


@dataclass(frozen=True)
class Ticket:
    """The ``202 pending`` answer to a submit: what the status endpoint needs."""

    run_id: str
    model: str
    cost: float | None
    payment_source: str | None
    # NanoGPT's X-Request-ID of the answer (what its support asks for), set by the client.
    request_id: str | None = None


@dataclass(frozen=True)
class AudioLink:
    """A synchronous submit, or a completed status: the audio waits at ``audio_url``.

    A synchronous ``200`` also says what it cost, and in which ``currency``; None if not.
    """

    audio_url: str
    content_type: str | None
    cost: float | None = None
    currency: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Pending:
    status: str
    queue_position: int | None
    request_id: str | None = None


@dataclass(frozen=True)
class Failed:
    error: errors.PermanentError


StatusResult = Pending | AudioLink | Failed


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_ticket(payload: object, *, fallback_model: str) -> Ticket:
    """Read a ``202`` body; raises :class:`errors.InvalidResponse` when it has no ``runId``."""
    if not isinstance(payload, dict):
        raise errors.InvalidResponse("submit: 202 body is not a JSON object")
    run_id = _str(payload.get("runId"))
    if run_id is None:
        raise errors.InvalidResponse("submit: 202 body has no runId")
    return Ticket(
        run_id=run_id,
        model=_str(payload.get("model")) or fallback_model,
        cost=_number(payload.get("cost")),
        payment_source=_str(payload.get("paymentSource")),
    )


def parse_sync_answer(payload: object) -> AudioLink:
    """Read a synchronous ``200`` JSON body, which must carry ``audioUrl``."""
    if not isinstance(payload, dict) or _str(payload.get("audioUrl")) is None:
        raise errors.InvalidResponse("submit: 200 JSON body has no audioUrl")
    return AudioLink(
        str(payload["audioUrl"]),
        _str(payload.get("contentType")),
        cost=_number(payload.get("cost")),
        currency=_str(payload.get("currency")),
    )


def parse_status(payload: object) -> StatusResult:
    """Turn a status body into Pending, AudioLink (completed) or Failed.

    Raises :class:`errors.InvalidResponse` for a body that cannot be used (not an object, no
    status, completed without ``audioUrl``): the caller retries it a bounded number of times.
    """
    if not isinstance(payload, dict):
        raise errors.InvalidResponse("status: body is not a JSON object")
    status = _str(payload.get("status"))
    if status is None:
        raise errors.InvalidResponse("status: body has no status")
    status = status.strip().lower()
    if status == "completed":
        url = _str(payload.get("audioUrl"))
        if url is None:
            raise errors.InvalidResponse("status: completed without audioUrl")
        return AudioLink(url, _str(payload.get("contentType")))
    if status in ("error", "failed"):
        message = _str(payload.get("error")) or "TTS generation failed"
        if payload.get("code") == "CONTENT_POLICY_VIOLATION":
            return Failed(errors.ContentPolicyViolation(message))
        return Failed(errors.UpstreamFailed(message))
    if status in TERMINAL_STATUSES:
        detail = _str(payload.get("error"))
        return Failed(
            errors.UpstreamFailed(
                f"NanoGPT ended the run: {status}" + (f": {detail}" if detail else "")
            )
        )
    position = payload.get("queuePosition")
    queue_position = (
        position if isinstance(position, int) and not isinstance(position, bool) else None
    )
    if queue_position is not None and queue_position < 0:
        queue_position = None
    return Pending(status=status, queue_position=queue_position)
