"""get() and watch() on real Redis: records written by the worker's own JobStore, progress
streams written as the contract says the worker writes them (XADD, MAXLEN ~ 50)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

import tts_client.client
from tasks.audio.storage import StoredAudio
from tasks.record.jobs import JobStore, Watch
from tts_client import Audio, Error, TTSClient, Update

SHA = "ab" * 32
AUDIO = StoredAudio("audio/wav", 100, SHA, "file:///a/x.wav", path="/a/x.wav")


@pytest.fixture
def store(db: redis.Redis) -> JobStore:
    return JobStore(db, ttl_s=600)


def polling(store: JobStore, job_id: str) -> None:
    fields = {"status": "polling", "model": "M", "run_id": "r1", "queue_position": 3}
    assert store.create(job_id, fields, ttl_s=600, check_at=Watch.DROP)


def complete(store: JobStore, job_id: str) -> None:
    store.redis.hset(store.key(job_id), "status", "downloading")
    outcome = {"type": "tts.completed", "audio": AUDIO.as_dict()}
    assert store.settle(job_id, outcome, guards={"status": "downloading"}, check_at=time.time())


def progress(db: redis.Redis, job_id: str, status: str, **fields: object) -> None:
    """One entry as the worker appends it (the contract in issue 20's brief)."""
    entry = {"status": status, "at": repr(time.time())}
    entry |= {name: str(value) for name, value in fields.items()}
    db.xadd(f"tts:progress:{job_id}", entry, maxlen=50, approximate=True)


def test_get_reads_a_running_and_an_ended_record(tts: TTSClient, store: JobStore) -> None:
    assert tts.get("nobody") is None
    polling(store, "j1")
    running = tts.get("j1")
    assert running is not None
    assert (running.status, running.queue_position, running.model, running.run_id) == (
        "polling",
        3,
        "M",
        "r1",
    )
    assert not running.ended
    assert (running.audio, running.error, running.type, running.webhook_id) == (None,) * 4

    complete(store, "j1")
    ended = tts.get("j1")
    assert ended is not None
    assert ended.ended
    assert (ended.status, ended.type) == ("completed", "tts.completed")
    assert ended.audio == Audio("file:///a/x.wav", "audio/wav", 100, SHA, path="/a/x.wav")
    worker_view = store.get("j1")
    assert worker_view is not None
    assert ended.webhook_id == f"msg_{worker_view.outcome_id}"
    assert ended.finished_at == worker_view.finished_at


def test_get_reads_a_failure(tts: TTSClient, store: JobStore) -> None:
    polling(store, "j2")
    error = {"code": "TIMEOUT", "message": "still pending at the deadline"}
    assert store.settle("j2", {"type": "tts.failed", "error": error}, check_at=time.time())
    job = tts.get("j2")
    assert job is not None
    assert (job.status, job.error) == ("failed", Error("TIMEOUT", "still pending at the deadline"))


def test_watch_of_an_ended_job_answers_at_once(tts: TTSClient, store: JobStore) -> None:
    polling(store, "done")
    complete(store, "done")
    started = time.monotonic()
    updates = list(tts.watch("done"))
    assert time.monotonic() - started < 0.5
    [last] = updates
    assert (last.job_id, last.status, last.ended) == ("done", "completed", True)


def follow(tts: TTSClient, job_id: str, timeout: float) -> Iterator[tuple[float, Update]]:
    started = time.monotonic()
    for update in tts.watch(job_id, timeout=timeout):
        yield time.monotonic() - started, update


def test_watch_follows_a_pending_job_to_its_end(
    tts: TTSClient, store: JobStore, db: redis.Redis
) -> None:
    polling(store, "live")
    progress(db, "live", "submitting")
    progress(db, "live", "polling", queue_position=2, eta_s=4.5)

    def worker() -> None:
        time.sleep(0.5)
        progress(db, "live", "polling", queue_position=1, eta_s=2.0)
        time.sleep(0.5)
        progress(db, "live", "downloading")
        complete(store, "live")
        progress(db, "live", "completed")
        # Written after the end: a watch must have stopped already.
        progress(db, "live", "polling")

    thread = threading.Thread(target=worker)
    thread.start()
    seen = list(follow(tts, "live", timeout=10))
    thread.join()
    updates = [update for _, update in seen]
    assert [(u.status, u.queue_position, u.eta_s) for u in updates] == [
        ("submitting", None, None),
        ("polling", 2, 4.5),
        ("polling", 1, 2.0),
        ("downloading", None, None),
        ("completed", None, None),
    ]
    assert all(u.at is not None and u.job_id == "live" for u in updates)
    # Updates arrive as they are written, not at the end: the third came after ~0.5 s.
    assert 0.3 < seen[2][0] < 0.9 < seen[-1][0] < 3


def test_watch_times_out(tts: TTSClient, store: JobStore, db: redis.Redis) -> None:
    polling(store, "slow")
    progress(db, "slow", "polling", queue_position=5)
    watch = tts.watch("slow", timeout=0.5)
    assert next(watch).queue_position == 5
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="slow"):
        next(watch)
    assert time.monotonic() - started < 1.5


def test_watch_of_a_job_with_no_record_yet_waits_for_it(
    tts: TTSClient, store: JobStore, db: redis.Redis
) -> None:
    def worker() -> None:
        time.sleep(0.3)
        polling(store, "late")
        progress(db, "late", "polling", queue_position=0)
        complete(store, "late")
        progress(db, "late", "completed")

    thread = threading.Thread(target=worker)
    thread.start()
    statuses = [u.status for u in tts.watch("late", timeout=5)]
    thread.join()
    assert statuses == ["polling", "completed"]


def test_watch_ends_from_the_record_when_the_stream_lost_its_end(
    tts: TTSClient, store: JobStore, db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that expired, or a worker that publishes none: after a quiet block the
    record says the job ended, and the watch ends with it."""
    monkeypatch.setattr(tts_client.client, "WATCH_BLOCK_MS", 200)
    polling(store, "quiet")
    progress(db, "quiet", "polling", queue_position=1)
    timer = threading.Timer(0.5, complete, args=(store, "quiet"))
    timer.start()
    statuses = [u.status for u in tts.watch("quiet", timeout=5)]
    timer.join()
    assert statuses == ["polling", "completed"]
