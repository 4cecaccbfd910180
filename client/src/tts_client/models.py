"""Typed views of what the worker writes: the job record, its progress, its webhook body.

Each is a frozen dataclass built by a ``from_*`` classmethod from the raw Redis hash, stream
entry or JSON body; fields the worker did not write are None. Unknown fields are ignored, so a
newer worker that adds one does not break an older client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tts_client import contract


def _float(value: Any) -> float | None:
    if value in (None, "", "null"):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if value in (None, "", "null"):
        return None
    return int(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Audio:
    """Where a completed job's audio is: ``url`` always (``file://`` on local disk, a presigned
    ``https://`` GET in S3); ``path`` on local disk; ``bucket`` and ``key`` in S3."""

    url: str
    content_type: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    path: str | None = None
    bucket: str | None = None
    key: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Audio:
        return cls(
            url=str(data.get("url") or ""),
            content_type=_str(data.get("content_type")),
            bytes=_int(data.get("bytes")),
            sha256=_str(data.get("sha256")),
            path=_str(data.get("path")),
            bucket=_str(data.get("bucket")),
            key=_str(data.get("key")),
        )


@dataclass(frozen=True)
class Error:
    """Why a job failed: a public error code (README, "Error codes") and a message."""

    code: str
    message: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Error:
        return cls(code=str(data.get("code") or ""), message=str(data.get("message") or ""))


def _audio(data: Any) -> Audio | None:
    return Audio.from_dict(data) if isinstance(data, Mapping) else None


def _error(data: Any) -> Error | None:
    return Error.from_dict(data) if isinstance(data, Mapping) else None


@dataclass(frozen=True)
class TTSEvent:
    """A verified webhook: the end of one job (``type`` is ``tts.completed`` or ``tts.failed``).

    ``webhook_id`` is the same on every delivery of one outcome: record it to apply it once.
    """

    type: str
    job_id: str
    webhook_id: str
    run_id: str | None = None
    model: str | None = None
    cost: float | None = None
    payment_source: str | None = None
    currency: str | None = None
    audio: Audio | None = None
    error: Error | None = None
    #: The job whose audio (or verdict on the content) answered this one, without a NanoGPT
    #: call (``cost`` 0; workers with ``TTS_REUSE_TTL``); None for a job that made its own.
    reused_from: str | None = None
    #: The whole body as the worker sent it.
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def completed(self) -> bool:
        return self.type == contract.EVENT_COMPLETED

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, webhook_id: str) -> TTSEvent:
        """The event in a webhook body (already verified); ValueError if it is not one."""
        kind, job_id = body.get("type"), body.get("job_id")
        if kind not in (contract.EVENT_COMPLETED, contract.EVENT_FAILED):
            raise ValueError(f"not a TTS event type: {kind!r}")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("the event has no job_id")
        return cls(
            type=kind,
            job_id=job_id,
            webhook_id=webhook_id,
            run_id=_str(body.get("run_id")),
            model=_str(body.get("model")),
            cost=_float(body.get("cost")),
            payment_source=_str(body.get("payment_source")),
            currency=_str(body.get("currency")),
            audio=_audio(body.get("audio")),
            error=_error(body.get("error")),
            reused_from=_str(body.get("reused_from")),
            data=dict(body),
        )


@dataclass(frozen=True)
class Job:
    """A job's record as the worker keeps it (``TTS_JOB_TTL`` after its end).

    ``status``: submitting, posting, polling, downloading, completed or failed. An ended job
    carries what its webhook carries: ``audio`` (completed) or ``error`` (failed), ``cost``,
    ``payment_source``, ``currency`` and its ``webhook_id``.
    """

    job_id: str
    status: str
    model: str | None = None
    run_id: str | None = None
    cost: float | None = None
    payment_source: str | None = None
    currency: str | None = None
    notify_url: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    polls: int = 0
    queue_position: int | None = None
    last_error: str | None = None
    #: Where the webhook stands: queued, delivered, gone, refused, expired or none.
    notify_state: str | None = None
    #: The outcome's event type (``tts.completed``/``tts.failed``), None while it runs.
    type: str | None = None
    audio: Audio | None = None
    error: Error | None = None
    webhook_id: str | None = None
    #: As on the webhook: the job whose audio (or verdict) answered this one, if one did.
    reused_from: str | None = None
    #: Who sent it and how urgent it is (``normal`` when the sender did not say).
    tenant: str | None = None
    priority: str = contract.NORMAL

    @property
    def ended(self) -> bool:
        """Whether the job has its outcome (completed or failed)."""
        return self.type is not None or self.status in contract.ENDED

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> Job:
        """The job in a record read with HGETALL (decoded to text)."""
        outcome: dict[str, Any] = json.loads(raw["outcome"]) if raw.get("outcome") else {}
        job_id = raw["job_id"]
        ended = bool(outcome)
        outcome_id = raw.get("outcome_id")
        if not ended:
            webhook_id = None
        elif outcome_id:
            webhook_id = contract.webhook_id(outcome_id)
        else:
            # A record settled before outcome ids existed: the worker's fallback id.
            webhook_id = "msg_" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
        return cls(
            job_id=job_id,
            status=raw.get("status", "unknown"),
            model=raw.get("model"),
            run_id=raw.get("run_id"),
            cost=_float(raw.get("cost")),
            payment_source=raw.get("payment_source"),
            currency=raw.get("currency"),
            notify_url=raw.get("notify_url"),
            created_at=_float(raw.get("created_at")),
            updated_at=_float(raw.get("updated_at")),
            finished_at=_float(raw.get("finished_at")),
            polls=_int(raw.get("polls")) or 0,
            queue_position=_int(raw.get("queue_position")),
            last_error=raw.get("last_error"),
            notify_state=raw.get("notify_state"),
            type=_str(outcome.get("type")) if ended else None,
            audio=_audio(outcome.get("audio")),
            error=_error(outcome.get("error")),
            webhook_id=webhook_id,
            reused_from=_str(outcome.get("reused_from")),
            tenant=raw.get("tenant"),
            priority=raw.get("priority") or contract.NORMAL,
        )


@dataclass(frozen=True)
class Update:
    """One change in a job's progress: its ``status`` and, where known, its place in NanoGPT's
    queue (``queue_position``, 0 = generating or next) and the seconds until NanoGPT should
    start generating it (``eta_s``, from the worker's measure of the queue's speed; None at the
    head of the queue or when unknown)."""

    job_id: str
    status: str
    queue_position: int | None = None
    eta_s: float | None = None
    #: When the worker saw the change (epoch seconds).
    at: float | None = None

    @property
    def ended(self) -> bool:
        """Whether this is the job's last update (completed or failed)."""
        return self.status in contract.ENDED

    @classmethod
    def from_entry(cls, job_id: str, fields: Mapping[str, str]) -> Update:
        """An update from one progress-stream entry."""
        return cls(
            job_id=job_id,
            status=fields.get("status", "unknown"),
            queue_position=_int(fields.get("queue_position")),
            eta_s=_float(fields.get("eta_s")),
            at=_float(fields.get("at")),
        )

    @classmethod
    def from_job(cls, job: Job) -> Update:
        """The update a job's record stands for (a job that ended before the watch began)."""
        status = job.status
        if job.type is not None and status not in contract.ENDED:
            status = contract.COMPLETED if job.type == contract.EVENT_COMPLETED else contract.FAILED
        return cls(
            job_id=job.job_id,
            status=status,
            queue_position=job.queue_position,
            at=job.finished_at or job.updated_at,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what the event-stream views send."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "queue_position": self.queue_position,
            "eta_s": self.eta_s,
            "at": self.at,
        }
