"""TTSClient against a real worker (the session's, tests/support/stack.py), the NanoGPT
simulator and a webhook receiver: jobs submitted through the client complete, their webhooks
verify with verify_webhook, and get(), cancel() and watch() see what the worker did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import ELEVEN, SECRET, wait_until
from tests.support.worker import WorkerProcess
from tts_client import TTSClient, verify_webhook
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def tts(redis_server: EmbeddedRedis, worker: WorkerProcess) -> Iterator[TTSClient]:
    """A client of the session worker's broker, which is also its job-state Redis."""
    with TTSClient(redis_server.url) as client:
        yield client


def test_five_submitted_jobs_complete_and_their_webhooks_verify(
    tts: TTSClient, receiver: Receiver
) -> None:
    job_ids = [
        tts.submit(f"Client job {n} [[sim pending=1]]", ELEVEN, notify_url=receiver.url)
        for n in range(5)
    ]
    for job_id in job_ids:
        delivery = receiver.wait_for(job_id)
        event = verify_webhook(SECRET, delivery.body, delivery.headers)
        assert (event.type, event.job_id) == ("tts.completed", job_id)
        assert event.audio is not None
        assert event.audio.url.startswith("file://")
        assert event.audio.path
        assert event.audio.url.endswith(event.audio.path)
        job = wait_until(lambda j=job_id: (found := tts.get(j)) and found.ended and found)
        assert job.status == "completed"
        assert job.audio == event.audio
        assert job.webhook_id == event.webhook_id == delivery.headers["webhook-id"]


def test_a_typo_raises_before_anything_is_sent(tts: TTSClient) -> None:
    with pytest.raises(TypeError, match="voice_id"):
        tts.submit("Never sent", ELEVEN, voice_id="x")  # type: ignore[call-arg]


def test_cancel_ends_a_running_job(tts: TTSClient, receiver: Receiver) -> None:
    job_id = tts.submit("Long [[sim pending=200]]", ELEVEN, notify_url=receiver.url)
    wait_until(lambda: (job := tts.get(job_id)) and job.status == "polling")
    assert tts.cancel(job_id) == "cancelled"
    event = verify_webhook(SECRET, *_body_and_headers(receiver, job_id))
    assert (event.type, event.error and event.error.code) == ("tts.failed", "CANCELLED")
    assert tts.cancel(job_id) == "already ended: failed"


def _body_and_headers(receiver: Receiver, job_id: str) -> tuple[bytes, dict[str, str]]:
    delivery = receiver.wait_for(job_id)
    return delivery.body, delivery.headers


def test_watch_follows_a_real_job_to_its_end(tts: TTSClient) -> None:
    job_id = tts.submit("Watched [[sim pending=2]]", ELEVEN)
    updates = list(tts.watch(job_id, timeout=30))
    assert updates[-1].status == "completed"
    assert all(u.job_id == job_id for u in updates)
    again = list(tts.watch(job_id, timeout=1))  # ended before this watch: one update, at once
    assert [u.status for u in again] == ["completed"]


def test_watch_of_a_three_second_generation_shows_it_pending(tts: TTSClient) -> None:
    """Enable once the worker writes tts:progress:<job_id>: before it, watch() sees only the
    job's end (from its record)."""
    job_id = tts.submit("Generating [[sim gen_s=3]]", ELEVEN)
    updates = list(tts.watch(job_id, timeout=60))
    assert updates[-1].status == "completed"
    assert [u for u in updates[:-1] if u.status == "polling"], updates
