"""Every environment variable the project reads, read once into one immutable object.

No other module touches ``os.environ``: tasks, the CLI and the Celery app all call
:func:`get_settings`. The names of the variables are part of the public contract (README).
"""

from __future__ import annotations

import base64
import functools
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# SigV4 presigned URLs cannot live longer than seven days.
MAX_AUDIO_URL_TTL_S = 7 * 86_400
# Standard Webhooks asks for 24 to 64 random bytes; a shorter key can be guessed offline from
# one signed delivery.
MIN_WEBHOOK_SECRET_BYTES = 24


@dataclass(frozen=True)
class StorageLocation:
    """Where audio goes, parsed from ``TTS_STORAGE_URL``: a local directory or a bucket."""

    kind: Literal["file", "s3"]
    path: Path | None = None
    bucket: str = ""
    # "" or ends with "/": object keys are ``prefix + file name``.
    prefix: str = ""


def parse_storage_url(url: str) -> StorageLocation:
    """``file:///abs/dir`` or ``s3://bucket[/prefix]``; raises ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("TTS_STORAGE_URL takes no credentials, query or fragment")
    if parts.scheme == "file":
        path = urllib.parse.unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ValueError("TTS_STORAGE_URL file URLs need an absolute path: file:///abs/dir")
        return StorageLocation("file", path=Path(path).resolve())
    if parts.scheme == "s3":
        if not parts.netloc or parts.port is not None:
            raise ValueError("TTS_STORAGE_URL must name a bucket: s3://bucket/prefix")
        prefix = parts.path.strip("/")
        return StorageLocation("s3", bucket=parts.netloc, prefix=prefix + "/" if prefix else "")
    raise ValueError("TTS_STORAGE_URL must start with file:// or s3://")


def host_key(host: str, port: int | None) -> str:
    """How a trusted-host entry is kept: ``host`` (any port) or ``host:port`` (``[v6]:port``)."""
    host = host.lower()
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hosts(value: str, *, name: str) -> frozenset[str]:
    """A comma-separated list of ``host`` or ``host:port`` (IPv6 as ``[::1]:8080`` or ``::1``),
    as :func:`host_key` entries; raises ValueError naming the variable for anything else."""
    keys: set[str] = set()
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.count(":") > 1 and not item.startswith("["):
            item = f"[{item}]"  # a bare IPv6 address: no port
        parts = urllib.parse.urlsplit("//" + item)
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{name}: {raw.strip()!r} has a bad port") from exc
        if not parts.hostname or parts.path or parts.query or "@" in parts.netloc:
            raise ValueError(f"{name}: {raw.strip()!r} is not a host or host:port")
        if port == 0:
            raise ValueError(f"{name}: {raw.strip()!r} has a bad port")
        keys.add(host_key(parts.hostname, port))
    return frozenset(keys)


class Settings(BaseSettings):
    """Typed configuration; see the README's configuration table for each variable."""

    # hide_input_in_errors: a refused TTS_WEBHOOK_SECRET or API key must not be echoed into the
    # log of a worker that failed to start.
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, hide_input_in_errors=True
    )

    broker_url: str = Field(DEFAULT_REDIS_URL, validation_alias="CELERY_BROKER_URL")
    result_backend: str | None = Field(None, validation_alias="CELERY_RESULT_BACKEND")
    # Empty means "derive from the broker" (see _derive_redis_url).
    redis_url: str = Field("", validation_alias="TTS_REDIS_URL")

    api_key: SecretStr | None = Field(None, validation_alias="NANOGPT_API_KEY")
    base_url: str = Field("https://nano-gpt.com/api", validation_alias="NANOGPT_BASE_URL")

    audio_dir: Path = Field(Path("./audio"), validation_alias="TTS_AUDIO_DIR")
    # Empty means "file://" + TTS_AUDIO_DIR; see the ``storage`` property.
    storage_url: str = Field("", validation_alias="TTS_STORAGE_URL")
    # Lifetime of the presigned GET URL a webhook carries for audio in S3.
    audio_url_ttl_s: int = Field(
        3600, gt=0, le=MAX_AUDIO_URL_TTL_S, validation_alias="TTS_AUDIO_URL_TTL"
    )
    # Days a local audio file is kept by ``tts.cleanup_audio``; unset keeps files forever.
    audio_retention_days: float | None = Field(None, gt=0, validation_alias="TTS_AUDIO_RETENTION")
    # How often celery beat sends ``tts.cleanup_audio`` (only while a retention is set). An hour
    # keeps files at most that much past their retention, for one directory scan per hour.
    cleanup_interval_s: float = Field(3600.0, gt=0, validation_alias="TTS_CLEANUP_INTERVAL")
    # The usual AWS environment, for TTS_STORAGE_URL=s3://... Unset keys leave boto3's own
    # credential chain in charge (instance profile, web identity, ~/.aws).
    aws_access_key_id: SecretStr | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(None, validation_alias="AWS_SESSION_TOKEN")
    aws_region: str | None = Field(
        None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    # An S3-compatible service (MinIO, R2, GCS interoperability); unset means AWS itself.
    aws_endpoint_url: str | None = Field(None, validation_alias="AWS_ENDPOINT_URL")
    webhook_secret: SecretStr | None = Field(None, validation_alias="TTS_WEBHOOK_SECRET")
    # Hosts (or host:port) the worker may reach although they resolve to loopback or private
    # addresses, or over plain http: audio hosts here, webhook receivers in the next one. Two
    # lists, so trusting an internal audio host never lets a caller's notify_url reach it.
    trusted_hosts: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), validation_alias="TTS_TRUSTED_HOSTS"
    )
    trusted_webhook_hosts: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), validation_alias="TTS_TRUSTED_WEBHOOK_HOSTS"
    )
    max_audio_bytes: int = Field(52_428_800, gt=0, validation_alias="TTS_MAX_AUDIO_BYTES")

    poll_interval_s: float = Field(3.0, gt=0, validation_alias="TTS_POLL_INTERVAL")
    poll_max_interval_s: float = Field(30.0, gt=0, validation_alias="TTS_POLL_MAX_INTERVAL")
    poll_timeout_s: float = Field(900.0, gt=0, validation_alias="TTS_POLL_TIMEOUT")
    # NanoGPT calls per second for the whole fleet (submit and status; tasks/pacing/budget.py),
    # below NanoGPT's 25 per account so other clients of the key and clock skew have room. 0: no
    # budget (every call is made at once; for measuring the worker itself).
    upstream_rate_per_s: float = Field(20.0, ge=0, validation_alias="TTS_UPSTREAM_RATE")
    # Calls the budget lets through at once after a quiet spell, and grants it may have
    # outstanding. NanoGPT counts calls per second: rate + burst must stay below its 25 (at
    # 20 + 5 bench row 6 met 429s). Below 4, grants whose steps are still in the broker hold
    # back the next ones: at 2, row 6 used 15-18 of its 20 calls/s.
    upstream_burst: int = Field(4, ge=1, validation_alias="TTS_UPSTREAM_BURST")
    # Of the tokens left once the calls made straight from tasks are served, the share waiting
    # submits get when polls also wait (the rest go to polls by their chance of finding audio).
    upstream_submit_share: float = Field(
        0.5, gt=0, le=1, validation_alias="TTS_UPSTREAM_SUBMIT_SHARE"
    )
    # Lanes (tasks/pacing/fairness.py): the share of the tokens interactive jobs may take while
    # other jobs wait for theirs (all of them when nothing else waits; below 1, so interactive
    # work never starves the rest), and the share of the others' tokens bulk jobs may take while
    # normal ones wait.
    interactive_share: float = Field(0.5, gt=0, lt=1, validation_alias="TTS_INTERACTIVE_SHARE")
    bulk_share: float = Field(0.2, gt=0, lt=1, validation_alias="TTS_BULK_SHARE")
    # The steady wait between polls of an interactive job, instead of TTS_POLL_INTERVAL (never
    # longer), and a third of its longest (tasks/pacing/fairness.py): once its audio is ready it
    # waits about this long for the poll that finds it.
    interactive_poll_interval_s: float = Field(
        1.0, gt=0, validation_alias="TTS_INTERACTIVE_POLL_INTERVAL"
    )
    # Per-tenant caps (tasks/record/tenants.py), the same for every tenant; 0: none. A submit of
    # a tenant at a cap ends as TENANT_LIMIT before any NanoGPT call. Jobs in flight: submits
    # admitted and not ended; spend: the sum of what NanoGPT said its jobs cost today (UTC).
    tenant_max_in_flight: int = Field(0, ge=0, validation_alias="TTS_TENANT_MAX_IN_FLIGHT")
    tenant_max_spend_per_day: float = Field(
        0.0, ge=0, validation_alias="TTS_TENANT_MAX_SPEND_PER_DAY"
    )

    # Seconds a completed job's audio answers a later submit of the same request (model, voice,
    # every option, the normalised text: tasks/nanogpt/fingerprint.py) without a NanoGPT call;
    # identical submits in flight share one POST. 0: off (every submit makes its own POST).
    reuse_ttl_s: int = Field(0, ge=0, validation_alias="TTS_REUSE_TTL")

    webhook_retry_delay_s: float = Field(5.0, gt=0, validation_alias="TTS_WEBHOOK_RETRY_DELAY")
    # How long a failed webhook (5xx, 408/409/425/429, no answer) keeps being retried.
    webhook_retry_period_s: float = Field(
        86_400.0, gt=0, validation_alias="TTS_WEBHOOK_RETRY_PERIOD"
    )
    # Largest wait between two webhook attempts, so a receiver back after an outage hears soon.
    webhook_max_retry_delay_s: float = Field(
        600.0, gt=0, validation_alias="TTS_WEBHOOK_MAX_RETRY_DELAY"
    )

    # Connect and read timeouts for every HTTP call (NanoGPT, audio host, webhook receiver).
    http_connect_timeout_s: float = Field(5.0, gt=0, validation_alias="TTS_HTTP_CONNECT_TIMEOUT")
    http_read_timeout_s: float = Field(30.0, gt=0, validation_alias="TTS_HTTP_READ_TIMEOUT")
    # Wall-clock limit on one audio download, however slowly the bytes drip in.
    download_timeout_s: float = Field(120.0, gt=0, validation_alias="TTS_DOWNLOAD_TIMEOUT")
    # Retries of one step on transient upstream faults (5xx, timeouts, 429, bad JSON).
    max_retries: int = Field(8, ge=0, validation_alias="TTS_MAX_RETRIES")
    # First and largest backoff between those retries.
    retry_base_delay_s: float = Field(1.0, gt=0, validation_alias="TTS_RETRY_BASE_DELAY")
    retry_max_delay_s: float = Field(60.0, gt=0, validation_alias="TTS_RETRY_MAX_DELAY")
    # How late a step may be before the reconciler re-sends it (a lost message: worker killed,
    # publish failed). Shorter recovers sooner; longer re-sends less under heavy load.
    recovery_grace_s: float = Field(30.0, gt=0, validation_alias="TTS_RECOVERY_GRACE")
    # How often each worker looks for overdue jobs (one worker at a time, under a Redis lock).
    reconcile_interval_s: float = Field(5.0, gt=0, validation_alias="TTS_RECONCILE_INTERVAL")
    # Deliveries of one step that may kill their worker before the job is parked as failed.
    max_deliveries: int = Field(5, ge=1, validation_alias="TTS_MAX_DELIVERIES")
    # How long job records stay readable after their outcome.
    job_ttl_s: int = Field(7 * 86_400, gt=0, validation_alias="TTS_JOB_TTL")
    # On a cold shutdown (SIGQUIT, or SIGTERM when REMAP_SIGTERM=SIGQUIT as the Procfile sets),
    # running tasks get this long to finish before they are cancelled and re-queued. Below the
    # 30 s that Procfile platforms wait between SIGTERM and SIGKILL.
    worker_soft_shutdown_timeout_s: float = Field(
        20.0, ge=0, validation_alias="TTS_WORKER_SOFT_SHUTDOWN_TIMEOUT"
    )
    # Also consume Celery's default queue ``celery``, where an app's ``send_task`` without
    # ``queue=`` lands. Off by default: on a broker shared with an app (both at
    # redis://localhost:6379/0) that queue is the app's own, and its worker must get every task
    # there. An opt-in for a broker of our own; even then a foreign task is handed back, never
    # discarded (workers/consumer.py).
    consume_default_queue: bool = Field(False, validation_alias="TTS_CONSUME_DEFAULT_QUEUE")
    # Pool processes per worker; I/O-bound tasks, so more than the CPU count is fine.
    worker_concurrency: int = Field(8, gt=0, validation_alias="TTS_WORKER_CONCURRENCY")
    # Where beat keeps its last-run times (a file it rewrites; must be writable). /tmp suits a
    # developer's machine and a container; deploy/ points it at a private directory elsewhere.
    beat_schedule_file: Path = Field(
        Path("/tmp/tts-beat-schedule"),  # noqa: S108
        validation_alias="TTS_BEAT_SCHEDULE",
    )
    # Touched by the consuming worker every few seconds, for a cheap liveness probe
    # (workers/liveness.py); unset means no file.
    liveness_file: Path | None = Field(None, validation_alias="TTS_LIVENESS_FILE")

    # Prometheus /metrics from the worker main process; unset = off, 0 = any free port (logged).
    metrics_port: int | None = Field(None, ge=0, le=65_535, validation_alias="TTS_METRICS_PORT")
    # Loopback by default: metrics name models and error rates, not for the open internet.
    metrics_host: str = Field("127.0.0.1", validation_alias="TTS_METRICS_HOST")
    # "text" (Celery's format plus job and task ids) or "json" (one object per line).
    log_format: Literal["text", "json"] = Field("text", validation_alias="TTS_LOG_FORMAT")

    @field_validator("trusted_hosts", "trusted_webhook_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object, info: ValidationInfo) -> object:
        name = {"trusted_hosts": "TTS_TRUSTED_HOSTS"}.get(
            str(info.field_name), "TTS_TRUSTED_WEBHOOK_HOSTS"
        )
        if isinstance(value, str):
            return parse_hosts(value, name=name)
        if isinstance(value, (set, frozenset, list, tuple)):
            return parse_hosts(",".join(map(str, value)), name=name)
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _check_secret(cls, value: object) -> object:
        if value in (None, ""):
            return None
        if isinstance(value, str):
            raw = value.removeprefix("whsec_")
            try:
                decoded = base64.b64decode(raw, validate=True)
            except ValueError as exc:
                raise ValueError("TTS_WEBHOOK_SECRET must be 'whsec_' followed by base64") from exc
            if len(decoded) < MIN_WEBHOOK_SECRET_BYTES:
                raise ValueError(
                    f"TTS_WEBHOOK_SECRET decodes to a {len(decoded)}-byte key; use at least "
                    f"{MIN_WEBHOOK_SECRET_BYTES} random bytes, e.g. 'whsec_' + "
                    "base64 of 32 bytes from os.urandom"
                )
        return value

    @field_validator(
        "api_key",
        "liveness_file",
        "metrics_port",
        "audio_retention_days",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region",
        "aws_endpoint_url",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("audio_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Webhooks carry the absolute path, so resolve it once here.
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if not self.redis_url:
            derived = self.broker_url if _is_redis(self.broker_url) else DEFAULT_REDIS_URL
            object.__setattr__(self, "redis_url", derived)
        if self.poll_max_interval_s < self.poll_interval_s:
            raise ValueError("TTS_POLL_MAX_INTERVAL must be >= TTS_POLL_INTERVAL")
        if not self.storage_url:
            object.__setattr__(self, "storage_url", self.audio_dir.as_uri())
        parse_storage_url(self.storage_url)  # refuse a bad URL at start, not at the first job
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        self._check_reuse()
        return self

    def _check_reuse(self) -> None:
        """A reused job names its source's audio and reads it from the source's record: the
        record must outlive the reuse window, and the file must outlive the reusing job's own
        webhook retries (retention counts from the source's write, up to TTS_REUSE_TTL
        earlier than the reusing job's end)."""
        if not self.reuse_ttl_s:
            return
        if self.reuse_ttl_s > self.job_ttl_s:
            raise ValueError("TTS_REUSE_TTL must not exceed TTS_JOB_TTL (the source's record)")
        if self.audio_retention_days is not None:
            left_s = self.audio_retention_days * 86_400 - self.reuse_ttl_s
            if left_s < self.webhook_retry_period_s:
                raise ValueError(
                    "TTS_AUDIO_RETENTION must cover TTS_REUSE_TTL plus TTS_WEBHOOK_RETRY_PERIOD: "
                    "a reused file is as old as its source"
                )

    @property
    def broker_kind(self) -> Literal["redis", "amqp", "other"]:
        """The broker's family, from the scheme of ``CELERY_BROKER_URL``."""
        if _is_redis(self.broker_url):
            return "redis"
        if self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
            return "amqp"
        return "other"

    @property
    def storage(self) -> StorageLocation:
        """``TTS_STORAGE_URL`` parsed: where this process stores audio."""
        return parse_storage_url(self.storage_url)


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


# Variables an earlier release read, with what became of them: a worker still given one says so
# at start (workers/signals.py) and runs on. Not refused: removing them changed nothing a
# deployment must act on, and a rolling upgrade with the old configuration must not stop.
RETIRED = {
    "TTS_POLL_WAIT": (
        "every waiting poll is now parked in Redis, on every broker (issue 21); the variable is "
        "ignored and can be removed"
    ),
}


def retired_set() -> dict[str, str]:
    """The retired variables (:data:`RETIRED`) set in this process' environment, with what
    became of each."""
    return {name: why for name, why in RETIRED.items() if name in os.environ}


def env_names() -> frozenset[str]:
    """Every environment variable :class:`Settings` reads (for docs and deploy-file checks)."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names |= {a for a in alias.choices if isinstance(a, str)}
    return frozenset(names)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process we start: ours, with ``overrides`` on top.

    It lives here because this is the one module that reads ``os.environ``; callers (the demo,
    the tests' worker) name every variable the child must see differently.
    """
    return {**os.environ, **overrides}
