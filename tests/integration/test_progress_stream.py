"""The progress stream of a job (tasks/steps/progress.py) as a watcher sees it, from a real worker:
read with XREAD BLOCK while the job runs, and read after it ended."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tasks import names
from tasks.steps import progress
from tests.integration.conftest import ELEVEN, Send
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver

pytestmark = pytest.mark.integration

FINAL = {"completed", "failed"}


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    c.close()


def follow(client: redis.Redis, jid: str, *, timeout_s: float = 30.0) -> list[dict[str, str]]:
    """What a watcher reads, from the stream's start until the final entry."""
    key, last, seen = progress.stream_key(jid), "0", []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = client.xread({key: last}, block=500, count=100)
        for _stream, items in answer or []:  # type: ignore[union-attr]
            for entry_id, fields in items:
                last = entry_id
                seen.append(fields)
                if fields["status"] in FINAL:
                    return seen
    raise TimeoutError(f"no final entry for {jid} within {timeout_s}s: {seen}")


def test_a_job_that_generates_for_3_s_shows_pending_entries_then_completed(
    send: Send, receiver: Receiver, client: redis.Redis
) -> None:
    jid = f"it-progress-{uuid.uuid4().hex}"
    send(names.SUBMIT_TTS, "Slow [[sim gen_s=3]]", ELEVEN, notify_url=receiver.url, job_id=jid)
    seen = follow(client, jid)
    statuses = [e["status"] for e in seen]
    assert statuses[0] == "submitting"
    assert statuses[-1] == "completed"
    assert "downloading" in statuses
    pending = [e for e in seen if e["status"] == "polling" and "queue_position" in e]
    assert pending, seen  # the poll answers while NanoGPT generated
    assert all(float(e["at"]) > 0 for e in seen)
    assert seen[-1]["at"] >= seen[0]["at"]


def test_a_job_that_ended_before_anyone_read_still_has_its_final_entry(
    send: Send, receiver: Receiver, client: redis.Redis
) -> None:
    jid = f"it-progress-{uuid.uuid4().hex}"
    send(
        names.SUBMIT_TTS,
        "Quick [[sim mode=sync_json]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    receiver.wait_for(jid)
    key = progress.stream_key(jid)
    [(_id, last)] = client.xrevrange(key, count=1)  # type: ignore[misc]
    assert last["status"] == "completed"
    assert client.ttl(key) > 0  # it goes with the job record, not before
    assert follow(client, jid)[-1]["status"] == "completed"  # a late watcher ends at once


def test_a_rejected_job_ends_its_stream_failed(
    send: Send, receiver: Receiver, client: redis.Redis
) -> None:
    jid = f"it-progress-{uuid.uuid4().hex}"
    send(names.SUBMIT_TTS, "", ELEVEN, notify_url=receiver.url, job_id=jid)
    receiver.wait_for(jid)
    assert [e["status"] for e in follow(client, jid)] == ["failed"]


def test_a_queued_job_shows_its_place_and_the_schedules_eta(
    send: Send, receiver: Receiver, client: redis.Redis
) -> None:
    jid = f"it-progress-{uuid.uuid4().hex}"
    text = "Queued [[sim pending=2 queue=4]]"
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    queued = [e for e in follow(client, jid) if e.get("queue_position") not in (None, "0")]
    assert queued
    # First seen in line: the schedule's prior speed (tasks/pacing/schedule.py) times the places.
    assert queued[0]["queue_position"] == "4"
    assert float(queued[0]["eta_s"]) == pytest.approx(4 * 1.0)
