"""Every environment variable the project reads, read once into one immutable object.

No other module touches ``os.environ``: tasks, the CLI and the Celery app all call
:func:`get_settings`. The names of the variables are part of the public contract (README).
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


class Settings(BaseSettings):
    """Typed configuration; see the README's configuration table for each variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)

    broker_url: str = Field(DEFAULT_REDIS_URL, validation_alias="CELERY_BROKER_URL")
    result_backend: str | None = Field(None, validation_alias="CELERY_RESULT_BACKEND")
    # Empty means "derive from the broker" (see _derive_redis_url).
    redis_url: str = Field("", validation_alias="TTS_REDIS_URL")

    api_key: SecretStr | None = Field(None, validation_alias="NANOGPT_API_KEY")
    base_url: str = Field("https://nano-gpt.com/api", validation_alias="NANOGPT_BASE_URL")

    audio_dir: Path = Field(Path("./audio"), validation_alias="TTS_AUDIO_DIR")
    webhook_secret: SecretStr | None = Field(None, validation_alias="TTS_WEBHOOK_SECRET")
    trusted_hosts: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), validation_alias="TTS_TRUSTED_HOSTS"
    )
    max_audio_bytes: int = Field(52_428_800, gt=0, validation_alias="TTS_MAX_AUDIO_BYTES")

    poll_interval_s: float = Field(3.0, gt=0, validation_alias="TTS_POLL_INTERVAL")
    poll_max_interval_s: float = Field(30.0, gt=0, validation_alias="TTS_POLL_MAX_INTERVAL")
    poll_timeout_s: float = Field(900.0, gt=0, validation_alias="TTS_POLL_TIMEOUT")

    webhook_retry_delay_s: float = Field(5.0, gt=0, validation_alias="TTS_WEBHOOK_RETRY_DELAY")
    # How long a refused webhook keeps being retried before the delivery is given up.
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
    # How long job records stay readable after their outcome.
    job_ttl_s: int = Field(7 * 86_400, gt=0, validation_alias="TTS_JOB_TTL")

    # Prometheus /metrics from the worker main process; unset = off, 0 = any free port (logged).
    metrics_port: int | None = Field(None, ge=0, le=65_535, validation_alias="TTS_METRICS_PORT")
    # Loopback by default: metrics name models and error rates, not for the open internet.
    metrics_host: str = Field("127.0.0.1", validation_alias="TTS_METRICS_HOST")
    # "text" (Celery's format plus job and task ids) or "json" (one object per line).
    log_format: Literal["text", "json"] = Field("text", validation_alias="TTS_LOG_FORMAT")

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(h.strip().lower() for h in value.split(",") if h.strip())
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
            if not decoded:
                raise ValueError("TTS_WEBHOOK_SECRET decodes to an empty key")
        return value

    @field_validator("api_key", "metrics_port", mode="before")
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
        return self


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
