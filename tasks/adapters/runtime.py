"""The per-process objects tasks share: settings, job store, HTTP sessions, audio store.

Built lazily on first use in each worker process (never before the prefork pool forks, so no
socket is shared between processes) and dropped by :func:`reset` after a fork.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry
from requests.adapters import HTTPAdapter

from tasks.audio import storage
from tasks.audio.audio_store import AudioStore, LocalStore
from tasks.config.settings import get_settings
from tasks.nanogpt.client import NanoGPTClient, SubmitResult
from tasks.nanogpt.parsing import StatusResult
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.net.safe_http import SafeHttp
from tasks.pacing.budget import Budget
from tasks.pacing.dispatch import Dispatcher, celery_send
from tasks.pacing.learning import Learning
from tasks.record.jobs import JobStore
from tasks.steps.context import Ctx
from tasks.webhooks import delivery as webhooks

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

USER_AGENT = "tts-worker/0.1 (+celery)"
# Redis answers in microseconds; seconds of silence mean it is gone, and the task should retry.
REDIS_TIMEOUT_S = 5.0


def no_resend() -> Retry:
    """The client's retry policy: none. A command whose reply was late or cut off may have run
    (a Lua transition, a budget grant), and redis-py would send it again unseen (its default
    ``Retry`` covers ConnectionError and TimeoutError too). The error reaches the step instead,
    whose own retry meets the transition's guards, each of which knows its own earlier run
    (tasks/record/jobs.py)."""
    return Retry(NoBackoff(), 0)


@functools.cache
def redis_client() -> redis.Redis:
    s = get_settings()
    return redis.Redis.from_url(
        s.redis_url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=30,
        retry_on_timeout=False,
        retry=no_resend(),
    )


@functools.cache
def jobs() -> JobStore:
    return JobStore(redis_client(), ttl_s=get_settings().job_ttl_s)


def timeout_s() -> tuple[float, float]:
    s = get_settings()
    return (s.http_connect_timeout_s, s.http_read_timeout_s)


# Idle connections to NanoGPT kept per process: one per slot of a poll-only gevent worker with 64
# (README, "Capacity model"); with requests' default of 10 most of its polls would open and throw
# away a connection. More slots still work: the extra connections are just not kept.
NANOGPT_CONNECTIONS = 64


@functools.cache
def nanogpt() -> NanoGPTClient:
    s = get_settings()
    if s.api_key is None:
        raise RuntimeError("NANOGPT_API_KEY is not set")
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    adapter = HTTPAdapter(pool_maxsize=NANOGPT_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return NanoGPTClient(
        session,
        base_url=s.base_url,
        api_key=s.api_key.get_secret_value(),
        timeout_s=timeout_s(),
        max_audio_bytes=s.max_audio_bytes,
        audio_timeout_s=s.download_timeout_s,
    )


@functools.cache
def safe_http() -> SafeHttp:
    """For the audio files upstream points at (``TTS_TRUSTED_HOSTS``)."""
    return SafeHttp(
        trusted_hosts=get_settings().trusted_hosts, timeout_s=timeout_s(), user_agent=USER_AGENT
    )


@functools.cache
def webhook_http() -> SafeHttp:
    """For the receivers callers name in ``notify_url`` (``TTS_TRUSTED_WEBHOOK_HOSTS``)."""
    return SafeHttp(
        trusted_hosts=get_settings().trusted_webhook_hosts,
        timeout_s=timeout_s(),
        user_agent=USER_AGENT,
    )


@functools.cache
def s3_client() -> S3Client:
    # Imported here: a worker storing to a local directory never loads boto3.
    from tasks.audio import s3_store

    return s3_store.make_client(get_settings(), user_agent=USER_AGENT)


@functools.cache
def audio_store() -> AudioStore:
    """The store ``TTS_STORAGE_URL`` names: a local directory or an S3 bucket."""
    s = get_settings()
    where = s.storage
    if where.kind == "s3":
        from tasks.audio.s3_store import S3Store

        return S3Store(
            s3_client(), bucket=where.bucket, prefix=where.prefix, url_ttl_s=s.audio_url_ttl_s
        )
    assert where.path is not None  # a file URL always has one
    return LocalStore(where.path)


class _Upstream:
    """NanoGPT, built on first use (the worker's main process, which only records received
    messages, never needs the API key's session)."""

    def submit(self, request: SubmitRequest) -> SubmitResult:
        return nanogpt().submit(request)

    def status(self, poll: PollRequest) -> StatusResult:
        return nanogpt().status(poll)


class _AudioStore:
    """The audio store, built on first use (boto3 loads only where audio is stored)."""

    def save(
        self,
        chunks: Iterable[bytes],
        *,
        job_id: str,
        content_type: str,
        max_bytes: int,
        deadline_monotonic: float,
    ) -> storage.StoredAudio:
        return audio_store().save(
            chunks,
            job_id=job_id,
            content_type=content_type,
            max_bytes=max_bytes,
            deadline_monotonic=deadline_monotonic,
        )

    def fresh(self, audio: dict[str, Any]) -> dict[str, Any]:
        return audio_store().fresh(audio)

    def delete(self, audio: storage.StoredAudio) -> None:
        audio_store().delete(audio)


def _fetch(
    url: str, *, store: AudioStore, job_id: str, max_bytes: int, timeout_s: float
) -> storage.StoredAudio:
    return storage.download(
        safe_http(), url, store=store, job_id=job_id, max_bytes=max_bytes, timeout_s=timeout_s
    )


def _webhook(url: str, body: dict[str, Any], *, msg_id: str) -> int:
    secret = get_settings().webhook_secret
    return webhooks.deliver(
        webhook_http(),
        url,
        body,
        msg_id=msg_id,
        secret=secret.get_secret_value() if secret else None,
    )


@functools.cache
def budget() -> Budget:
    s = get_settings()
    return Budget(
        redis_client(), rate_per_s=s.upstream_rate_per_s, burst=s.upstream_burst, clock=time.time
    )


@functools.cache
def context() -> Ctx:
    """This process's :class:`Ctx`: the real Redis, NanoGPT, audio store, webhooks and clock."""
    return Ctx(
        settings=get_settings(),
        jobs=jobs(),
        upstream=_Upstream(),
        fetch=_fetch,
        audio_store=_AudioStore(),
        webhook=_webhook,
        dispatch=Dispatcher(celery_send, get_settings),
        clock=time.time,
        budget=budget(),
        learning=Learning(redis_client(), clock=time.time),
    )


def reset() -> None:
    """Forget every cached object (after a fork, or in tests that change the environment)."""
    for cached in (
        redis_client,
        jobs,
        budget,
        nanogpt,
        safe_http,
        webhook_http,
        s3_client,
        audio_store,
        context,
    ):
        cached.cache_clear()
