"""What a download fault may cost in retries: the audio host its three, the audio store the
API's budget (``TTS_MAX_RETRIES``), since trying again costs nothing upstream either way."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks import errors, names, steps
from tasks.nanogpt.parsing import AudioLink
from tasks.record.jobs import DUE_KEY, KEY_PREFIX
from tasks.record.states import Status
from tasks.steps.base import DOWNLOAD_MAX_RETRIES, Retry
from tests.support.ctx import make_ctx, settings

AUDIO_URL = "https://audio.example/a.wav"


class Link:
    """NanoGPT answering the POST 200 with where the audio waits (a synchronous model)."""

    def __init__(self) -> None:
        self.posts = 0

    def submit(self, request: Any) -> AudioLink:
        self.posts += 1
        return AudioLink(AUDIO_URL, "audio/wav")

    def status(self, poll: Any) -> Any:
        raise AssertionError("no status call for a synchronous answer")


def refusing(exc: errors.TransientError) -> Callable[..., Any]:
    def fetch(url: str, **_: Any) -> Any:
        assert url == AUDIO_URL
        raise exc

    return fetch


@pytest.fixture
def job_id(redis_client: redis.Redis) -> Iterator[str]:
    jid = f"db-{uuid.uuid4().hex}"
    yield jid
    redis_client.delete(KEY_PREFIX + jid)
    redis_client.zrem(DUE_KEY, jid)


def download_after(
    redis_client: redis.Redis, jid: str, exc: errors.TransientError, retries: int
) -> tuple[object, Any]:
    """Submit (NanoGPT answers with the audio's URL), then run the download as its retry
    number ``retries`` with every fetch failing with ``exc``; the result and the record."""
    upstream = Link()
    ctx, _ = make_ctx(redis_client, upstream=upstream, fetch=refusing(exc))
    steps.submit(ctx, steps.Delivery(names.SUBMIT_TTS, "s-1"), "Hello", "tts-1", job_id=jid)
    d = steps.Delivery(names.DOWNLOAD_AUDIO, "dl-1", retries=retries)
    result = steps.download(ctx, d, jid)
    assert upstream.posts == 1
    return result, ctx.jobs.get(jid)


DISK_FULL = errors.StorageUnavailable("local audio store: No space left on device")
HOST_DOWN = errors.DownloadInterrupted("download: ConnectionError")


def test_a_refusing_store_is_retried_past_the_audio_hosts_budget(
    redis_client: redis.Redis, job_id: str
) -> None:
    result, job = download_after(redis_client, job_id, DISK_FULL, DOWNLOAD_MAX_RETRIES)
    assert isinstance(result, Retry)
    assert (job.status, job.outcome, job.last_error) == (
        Status.DOWNLOADING,
        None,
        DISK_FULL.message,
    )


def test_a_refusing_store_fails_the_job_past_the_apis_budget(
    redis_client: redis.Redis, job_id: str
) -> None:
    result, job = download_after(redis_client, job_id, DISK_FULL, settings().max_retries)
    assert not isinstance(result, Retry)
    assert job.outcome == {"type": "tts.failed", "error": DISK_FULL.as_dict()}


def test_a_refusing_audio_host_keeps_its_three_retries(
    redis_client: redis.Redis, job_id: str
) -> None:
    result, job = download_after(redis_client, job_id, HOST_DOWN, DOWNLOAD_MAX_RETRIES)
    assert not isinstance(result, Retry)
    assert job.outcome == {"type": "tts.failed", "error": HOST_DOWN.as_dict()}
