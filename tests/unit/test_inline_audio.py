"""Audio a submit is answered with (200, the bytes themselves): Redis holds it only when small.

Above :data:`SPOOL_MAX_BYTES` the submit stores it in the audio store straight away (its final
place, named by the job id) and the download step only records it; the spool never holds a key
above the limit, and the record keeps no copy of the caller's text once NanoGPT accepted it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks import names, steps
from tasks.audio.audio_store import LocalStore
from tasks.nanogpt.client import InlineAudio
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, SPOOL_MAX_BYTES, SPOOL_PREFIX
from tasks.record.states import Status
from tests.support.ctx import make_ctx

WAV = "audio/wav"


class Inline:
    """NanoGPT answering every POST 200 with ``size`` bytes of audio."""

    def __init__(self, size: int) -> None:
        self.audio = b"RIFF" + bytes(size - 4)
        self.posts = 0

    def submit(self, request: Any) -> InlineAudio:
        self.posts += 1
        return InlineAudio(self.audio, WAV)

    def status(self, poll: Any) -> Any:
        raise AssertionError("no status call for inline audio")


@pytest.fixture
def job_id(redis_client: redis.Redis) -> Iterator[str]:
    jid = f"in-{uuid.uuid4().hex}"
    yield jid
    redis_client.delete(KEY_PREFIX + jid, SPOOL_PREFIX + jid)
    redis_client.zrem(DUE_KEY, jid)


def spool_bytes(client: redis.Redis, jid: str) -> int | None:
    """How much the spool holds for the job (bytes of its base64 text), None for no key."""
    return client.strlen(SPOOL_PREFIX + jid) if client.exists(SPOOL_PREFIX + jid) else None


def run(ctx: Any, jid: str) -> None:
    d = steps.Delivery(names.SUBMIT_TTS, jid)
    steps.submit(ctx, d, "Hello inline", "tts-1", job_id=jid)


def test_large_inline_audio_goes_to_the_store_not_the_spool(
    redis_client: redis.Redis, job_id: str, tmp_path: Path
) -> None:
    upstream = Inline(SPOOL_MAX_BYTES + 1)
    ctx, outbox = make_ctx(redis_client, upstream=upstream, audio_store=LocalStore(tmp_path))
    run(ctx, job_id)
    assert spool_bytes(redis_client, job_id) is None
    job = ctx.jobs.get(job_id)
    assert job is not None
    assert (job.status, job.request, job.spooled) == (Status.DOWNLOADING, None, False)
    assert job.stored_audio is not None
    assert Path(job.stored_audio["path"]).read_bytes() == upstream.audio
    assert outbox.names() == [names.DOWNLOAD_AUDIO]
    # The download step only records what the submit stored: no fetch, no second write.
    ctx2, outbox2 = make_ctx(redis_client, audio_store=object())
    steps.download(ctx2, steps.Delivery(names.DOWNLOAD_AUDIO, "dl-1"), job_id)
    done = ctx.jobs.get(job_id)
    assert done is not None
    assert done.status == Status.COMPLETED
    assert done.outcome == {"type": "tts.completed", "audio": job.stored_audio}
    assert outbox2.names() == [names.NOTIFY]
    assert upstream.posts == 1


def test_small_inline_audio_is_spooled_below_the_limit(
    redis_client: redis.Redis, job_id: str, tmp_path: Path
) -> None:
    upstream = Inline(SPOOL_MAX_BYTES)
    ctx, outbox = make_ctx(redis_client, upstream=upstream, audio_store=LocalStore(tmp_path))
    run(ctx, job_id)
    assert outbox.names() == [names.DOWNLOAD_AUDIO]
    assert ctx.jobs.spooled_audio(job_id) == upstream.audio
    job = ctx.jobs.get(job_id)
    assert job is not None
    assert (job.status, job.request, job.spooled) == (Status.DOWNLOADING, None, True)
    steps.download(ctx, steps.Delivery(names.DOWNLOAD_AUDIO, "dl-1"), job_id)
    done = ctx.jobs.get(job_id)
    assert done is not None
    assert done.status == Status.COMPLETED
    assert spool_bytes(redis_client, job_id) is None  # settle dropped it


def test_large_inline_audio_with_the_store_down_fails_without_spooling(
    redis_client: redis.Redis, job_id: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    upstream = Inline(SPOOL_MAX_BYTES + 1)
    ctx, _ = make_ctx(redis_client, upstream=upstream, audio_store=LocalStore(blocker / "audio"))
    run(ctx, job_id)
    assert spool_bytes(redis_client, job_id) is None
    job = ctx.jobs.get(job_id)
    assert job is not None
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "STORAGE_FAILED"
    assert upstream.posts == 1
    run(ctx, job_id)  # the same submit again: never a second POST
    assert upstream.posts == 1


def test_the_spool_refuses_audio_above_its_limit(redis_client: redis.Redis, job_id: str) -> None:
    ctx, _ = make_ctx(redis_client)
    with pytest.raises(ValueError, match="over the spool"):
        ctx.jobs.spool(job_id, bytes(SPOOL_MAX_BYTES + 1), ttl_s=60)
    assert spool_bytes(redis_client, job_id) is None
