"""The cancel step (tasks/steps/cancel.py) in every state a job can be in, against a real Redis:
it ends an open job once as CANCELLED and queues its webhook, and afterwards no POST, status
call, download or store starts; an ended or unknown job is left exactly as it was. The in-flight
cases cancel from inside the fake NanoGPT or audio fetch, the moment the request is out. Then
the cost a submit's answer states: kept in the job record, counted once, never after a cancel."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks import names, steps
from tasks.audio.audio_store import AudioStore, LocalStore
from tasks.audio.storage import StoredAudio
from tasks.client import CancelNotTaken, Client
from tasks.nanogpt import validation
from tasks.nanogpt.parsing import AudioLink, Pending, StatusResult, Ticket
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, SPOOL_PREFIX, WAIT_KEY, Job, Watch
from tasks.record.states import SEQ_DONE, Status
from tasks.steps.context import Ctx
from tests.support.ctx import Outbox, make_ctx, settings
from workers.embedded_redis import EmbeddedRedis

MODEL = "Elevenlabs-Turbo-V2.5"
HOOK = "https://hooks.example.com/tts"
OWNER = "submit-task-1"
TICKET = Ticket("run-1", MODEL, 0.0006, "USD")
AUDIO = b"RIFF"


@dataclass
class Upstream:
    """NanoGPT, recording every call; ``during`` runs while a request is out (a cancel)."""

    submit_answer: Any = TICKET
    status_answer: StatusResult = field(default_factory=lambda: Pending("pending", 2))
    calls: list[str] = field(default_factory=list)
    during: Callable[[], object] | None = None

    def submit(self, request: validation.SubmitRequest) -> Any:
        self.calls.append("submit")
        if self.during:
            self.during()
        return self.submit_answer

    def status(self, poll: validation.PollRequest) -> StatusResult:
        self.calls.append("status")
        if self.during:
            self.during()
        return self.status_answer


@dataclass
class Fetch:
    """The audio fetch, recording every call, storing :data:`AUDIO` in the real store it is
    given; ``during`` runs while it is out."""

    calls: list[str] = field(default_factory=list)
    during: Callable[[], object] | None = None

    def __call__(self, url: str, *, store: AudioStore, job_id: str, **_: Any) -> StoredAudio:
        self.calls.append(url)
        if self.during:
            self.during()
        return store.save(
            [AUDIO],
            job_id=job_id,
            content_type="audio/wav",
            max_bytes=len(AUDIO),
            deadline_monotonic=math.inf,
        )


@dataclass
class World:
    ctx: Ctx
    outbox: Outbox
    upstream: Upstream
    fetch: Fetch
    client: redis.Redis

    def job(self, jid: str) -> Job:
        job = self.ctx.jobs.get(jid)
        assert job is not None
        return job

    def cancel(self, jid: object, task_id: str = "cancel-1") -> str:
        return str(steps.cancel(self.ctx, steps.Delivery(names.CANCEL, task_id), jid))

    def submit(self, jid: str) -> object:
        d = steps.Delivery(names.SUBMIT_TTS, OWNER)
        return steps.submit(self.ctx, d, "Hello", MODEL, notify_url=HOOK, job_id=jid)

    def poll(self, jid: str) -> object:
        job = self.job(jid)
        assert job.token is not None
        d = steps.Delivery(names.POLL_TTS, "poll-1")
        return steps.poll(self.ctx, d, "run-1", MODEL, job_id=jid, lease=job.token, seq=0)

    def download(self, jid: str) -> object:
        return steps.download(self.ctx, steps.Delivery(names.DOWNLOAD_AUDIO, "dl-1"), jid)

    def snapshot(self, jid: str) -> tuple[Any, ...]:
        c = self.client
        return (
            c.hgetall(KEY_PREFIX + jid),
            c.zscore(DUE_KEY, jid),
            c.zscore(WAIT_KEY, jid),
            c.get(SPOOL_PREFIX + jid),
        )


@pytest.fixture
def jid(redis_client: redis.Redis) -> Iterator[str]:
    made = f"cancel-{uuid.uuid4().hex}"
    yield made
    redis_client.delete(KEY_PREFIX + made, SPOOL_PREFIX + made)
    redis_client.zrem(DUE_KEY, made)
    redis_client.zrem(WAIT_KEY, made)


@pytest.fixture
def w(redis_client: redis.Redis, tmp_path: Path) -> World:
    upstream, fetch = Upstream(), Fetch()
    store = LocalStore(tmp_path)
    ctx, outbox = make_ctx(redis_client, upstream=upstream, fetch=fetch, audio_store=store)
    return World(ctx, outbox, upstream, fetch, redis_client)


def files(w: World) -> list[str]:
    """The audio files in the store's directory."""
    return sorted(p.name for p in w.ctx.audio_store.dest_dir.iterdir())  # type: ignore[attr-defined]


def accept(w: World, jid: str) -> None:
    """The record a worker makes when it receives the submit: ``submitting``."""
    request = validation.submit_request("Hello", MODEL)
    assert steps.accept_submit(w.ctx, jid, request, HOOK, owner=OWNER)


def to_polling(w: World, jid: str) -> None:
    """Submitted, NanoGPT answered 202: polling, the first poll parked in tts:wait."""
    accept(w, jid)
    w.submit(jid)
    assert w.job(jid).status == Status.POLLING
    assert w.client.zscore(WAIT_KEY, jid) is not None
    w.outbox.sent.clear()


def to_downloading(w: World, jid: str) -> None:
    """Submitted, NanoGPT answered 200 with an audio URL: downloading, a download queued."""
    w.upstream.submit_answer = AudioLink("https://cdn.example.com/a.wav", "audio/wav")
    accept(w, jid)
    w.submit(jid)
    assert w.job(jid).status == Status.DOWNLOADING
    w.outbox.sent.clear()


def assert_cancelled_once(w: World, jid: str) -> None:
    job = w.job(jid)
    assert job.status == Status.FAILED
    assert job.outcome == {
        "type": "tts.failed",
        "error": {"code": "CANCELLED", "message": "cancelled by the caller"},
    }
    assert w.outbox.names() == [names.NOTIFY]
    assert w.client.zscore(WAIT_KEY, jid) is None


def test_submitting_job_is_cancelled_and_never_posted(w: World, jid: str) -> None:
    accept(w, jid)
    assert w.cancel(jid) == "cancelled"
    assert_cancelled_once(w, jid)

    w.submit(jid)  # the submit message, taken after the cancel
    assert w.upstream.calls == []
    assert_cancelled_once(w, jid)


def test_post_in_flight_is_answered_into_a_refused_transition(
    w: World, jid: str, caplog: pytest.LogCaptureFixture
) -> None:
    accept(w, jid)
    said: list[str] = []
    w.upstream.during = lambda: said.append(w.cancel(jid))
    with caplog.at_level(logging.WARNING):
        w.submit(jid)

    assert said == ["cancelled"]
    assert w.upstream.calls == ["submit"]
    assert_cancelled_once(w, jid)  # no poll started, nothing parked
    assert w.job(jid).run_id is None  # the ticket was not taken: no chain started
    assert "accepted (and billed) the submit as run run-1 after the job had ended" in caplog.text
    assert "cancelled while its POST was in flight" in caplog.text


def test_inline_audio_answered_after_the_cancel_leaves_no_spool(w: World, jid: str) -> None:
    from tasks.nanogpt.client import InlineAudio

    w.upstream.submit_answer = InlineAudio(b"RIFF", "audio/wav")
    accept(w, jid)
    w.upstream.during = lambda: w.cancel(jid)
    w.submit(jid)

    assert_cancelled_once(w, jid)
    assert w.client.get(SPOOL_PREFIX + jid) is None


def test_large_inline_audio_answered_after_the_cancel_leaves_no_file(w: World, jid: str) -> None:
    """Above the spool's limit the submit stores the bytes in their final place before it can
    record them: the job ended meanwhile, so that file belongs to nobody and must go."""
    from tasks.nanogpt.client import InlineAudio
    from tasks.record.jobs import SPOOL_MAX_BYTES

    w.upstream.submit_answer = InlineAudio(b"RIFF" + bytes(SPOOL_MAX_BYTES), "audio/wav")
    accept(w, jid)
    w.upstream.during = lambda: w.cancel(jid)
    w.submit(jid)

    assert_cancelled_once(w, jid)
    assert files(w) == []


def test_polling_job_loses_its_parked_poll_and_polls_no_more(w: World, jid: str) -> None:
    to_polling(w, jid)
    assert w.cancel(jid) == "cancelled"
    assert_cancelled_once(w, jid)
    assert w.job(jid).seq == SEQ_DONE

    w.upstream.calls.clear()
    w.poll(jid)  # the poll the releaser had already published
    assert w.upstream.calls == []
    assert w.outbox.names() == [names.NOTIFY]


def test_poll_in_flight_makes_its_one_call_and_stops(w: World, jid: str) -> None:
    to_polling(w, jid)
    w.upstream.calls.clear()
    w.upstream.during = lambda: w.cancel(jid)
    w.poll(jid)

    assert w.upstream.calls == ["status"]
    assert_cancelled_once(w, jid)  # not re-parked, no next poll published
    assert w.job(jid).polls == 0


def test_poll_in_flight_finding_the_audio_does_not_download(w: World, jid: str) -> None:
    to_polling(w, jid)
    w.upstream.status_answer = AudioLink("https://cdn.example.com/a.wav", "audio/wav")
    w.upstream.during = lambda: w.cancel(jid)
    w.poll(jid)

    assert_cancelled_once(w, jid)  # no download published


def test_downloading_job_is_cancelled_and_never_fetched(w: World, jid: str) -> None:
    to_downloading(w, jid)
    assert w.cancel(jid) == "cancelled"
    assert_cancelled_once(w, jid)

    w.outbox.sent.clear()
    w.download(jid)  # the download message, taken after the cancel
    assert w.fetch.calls == []
    # It only makes sure the webhook is on its way (claimed once by the notify step).
    assert w.outbox.names() in ([], [names.NOTIFY])
    assert w.job(jid).outcome["error"]["code"] == "CANCELLED"  # type: ignore[index]


def test_download_in_flight_finishes_but_does_not_complete_the_job(w: World, jid: str) -> None:
    to_downloading(w, jid)
    w.fetch.during = lambda: w.cancel(jid)
    w.download(jid)

    assert len(w.fetch.calls) == 1
    assert_cancelled_once(w, jid)
    assert files(w) == []  # what it stored for nobody is removed, not kept forever


def test_a_duplicate_download_keeps_the_audio_the_job_completed_with(w: World, jid: str) -> None:
    """Two copies of the download store the same file; the one refused must not remove it."""
    to_downloading(w, jid)
    w.fetch.during = lambda: (setattr(w.fetch, "during", None), w.download(jid))
    w.download(jid)

    job = w.job(jid)
    assert job.status == Status.COMPLETED
    assert job.outcome is not None
    assert Path(job.outcome["audio"]["path"]).read_bytes() == AUDIO
    assert len(files(w)) == 1


def test_ended_job_is_left_as_it_was(w: World, jid: str) -> None:
    to_downloading(w, jid)
    w.download(jid)
    assert w.job(jid).status == Status.COMPLETED
    w.outbox.sent.clear()
    before = w.snapshot(jid)

    assert w.cancel(jid) == "already ended: completed"
    assert w.snapshot(jid) == before
    assert w.outbox.sent == []


def test_cancel_twice_ends_the_job_once(w: World, jid: str) -> None:
    to_polling(w, jid)
    assert w.cancel(jid) == "cancelled"
    before = w.snapshot(jid)

    assert w.cancel(jid, task_id="cancel-2") == "already ended: failed"
    assert w.snapshot(jid) == before
    assert w.outbox.names() == [names.NOTIFY]


def test_one_cancel_run_twice_says_cancelled_both_times(w: World, jid: str) -> None:
    """The worker that received it ran it (tasks/adapters/received.py), then the task runs it
    again."""
    to_polling(w, jid)
    assert w.cancel(jid) == "cancelled"
    before = w.snapshot(jid)

    assert w.cancel(jid) == "cancelled"
    assert w.snapshot(jid) == before
    assert w.outbox.names() == [names.NOTIFY]


def test_one_cancel_delivered_twice_at_once_settles_once(
    w: World, jid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both copies read the job before either settled (seed 1008 of the simulation): one
    settles, the other finds the outcome its own message recorded; both say cancelled."""
    to_polling(w, jid)
    unsettled = w.job(jid)
    real_get = w.ctx.jobs.get
    reads = iter([unsettled])
    monkeypatch.setattr(w.ctx.jobs, "get", lambda job_id: next(reads, None) or real_get(job_id))
    assert w.cancel(jid) == "cancelled"
    reads = iter([unsettled])  # the copy's read, taken before the first settled
    before = w.snapshot(jid)

    assert w.cancel(jid) == "cancelled"
    assert w.snapshot(jid) == before
    assert w.outbox.names() == [names.NOTIFY]


@pytest.mark.parametrize("job_id", ["never-made", 42, None])
def test_unknown_job_changes_nothing(w: World, job_id: object) -> None:
    assert w.cancel(job_id) == "unknown job"
    assert w.outbox.sent == []
    assert w.client.exists(KEY_PREFIX + str(job_id)) == 0


def test_a_cancel_before_the_submit_was_received_ends_the_job_when_it_is(
    w: World, jid: str
) -> None:
    """The submit still waits in its queue (no worker received it: no record) when the cancel
    runs; the job ends CANCELLED, with its webhook, once a worker receives the submit, and no
    POST is sent (as Celery's revoke of a task not yet received)."""
    assert w.cancel(jid) == "unknown job"
    accept(w, jid)
    assert_cancelled_once(w, jid)
    w.outbox.sent.clear()
    w.submit(jid)
    assert w.upstream.calls == []
    assert w.outbox.sent == []
    assert w.cancel(jid) == "cancelled"  # the same message, run again, knows its own cancel


def test_a_cancel_before_a_run_sent_by_name_was_received_ends_it(w: World, jid: str) -> None:
    assert w.cancel(jid) == "unknown job"
    request = validation.poll_request(
        "run-1", MODEL, cost=None, payment_source=None, is_api_request=True
    )
    steps.accept_poll(w.ctx, jid, request, HOOK, owner="poll-by-name-1")
    assert_cancelled_once(w, jid)


def test_rejected_job_is_already_ended(w: World, jid: str) -> None:
    """A job whose record was made failed (bad arguments) is never cancelled over."""
    w.ctx.jobs.create(jid, {"status": Status.FAILED}, ttl_s=0, check_at=Watch.DROP)
    assert w.cancel(jid) == "already ended: failed"
    assert w.job(jid).outcome is None


# --- what the job records of the cost, and counts once --------------------------------------


def spend(model: str, source: str) -> float:
    from prometheus_client import REGISTRY

    return (
        REGISTRY.get_sample_value("tts_spend_total", {"model": model, "payment_source": source})
        or 0.0
    )


def test_ticket_cost_is_recorded_and_counted_once(w: World, jid: str) -> None:
    before = spend(MODEL, "USD")
    to_polling(w, jid)
    job = w.job(jid)
    assert (job.cost, job.payment_source, job.currency) == (0.0006, "USD", None)
    public = job.public()
    assert (public["cost"], public["payment_source"], public["currency"]) == (0.0006, "USD", None)
    w.submit(jid)  # the same submit delivered again: nothing more is recorded or counted
    assert spend(MODEL, "USD") == pytest.approx(before + 0.0006)


def test_sync_answer_cost_is_kept_at_audio_ready(w: World, jid: str) -> None:
    before = spend(MODEL, "EUR")
    w.upstream.submit_answer = AudioLink("https://cdn.example.com/a.wav", "audio/wav", 0.25, "EUR")
    accept(w, jid)
    w.submit(jid)
    job = w.job(jid)
    assert job.status == Status.DOWNLOADING
    assert (job.cost, job.payment_source, job.currency) == (0.25, None, "EUR")
    assert spend(MODEL, "EUR") == pytest.approx(before + 0.25)


def test_inline_audio_has_no_cost(w: World, jid: str) -> None:
    from tasks.nanogpt.client import InlineAudio

    w.upstream.submit_answer = InlineAudio(b"RIFF", "audio/wav")
    accept(w, jid)
    w.submit(jid)
    assert (w.job(jid).cost, w.job(jid).currency) == (None, None)


def test_answer_after_a_cancel_is_not_recorded_or_counted(w: World, jid: str) -> None:
    before = spend(MODEL, "USD")
    accept(w, jid)
    w.upstream.during = lambda: w.cancel(jid)
    w.submit(jid)
    assert w.job(jid).cost is None
    assert spend(MODEL, "USD") == before


# --- the caller's side: tasks.cancel_job and tts-worker cancel, through tasks.client ---------


@pytest.fixture
def client(quiet_redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Iterator[Client]:
    """A client whose broker no worker consumes: what it sends stays in the tts.poll list."""
    queue = names.QUEUES[names.CANCEL]
    redis_client.delete(queue)
    with Client(settings(CELERY_BROKER_URL=quiet_redis_server.url)) as made:
        yield made
    redis_client.delete(queue)


def test_client_answers_ended_jobs_without_sending(w: World, jid: str, client: Client) -> None:
    to_downloading(w, jid)
    w.download(jid)

    assert client.cancel(jid) == "already ended: completed"
    assert w.client.llen(names.QUEUES[names.CANCEL]) == 0


def test_client_sends_the_cancel_of_a_job_not_received_yet(
    w: World, jid: str, client: Client
) -> None:
    """Its submit may still wait in a queue: the cancel goes, and ends it when it comes."""
    assert client.cancel(jid) == "unknown job"
    assert w.client.llen(names.QUEUES[names.CANCEL]) == 1


def test_client_says_so_when_no_worker_takes_the_cancel(w: World, jid: str, client: Client) -> None:
    to_polling(w, jid)
    with pytest.raises(CancelNotTaken, match=r"no worker ran it within 0\.2 s"):
        client.cancel(jid, timeout_s=0.2)
    assert w.client.llen(names.QUEUES[names.CANCEL]) == 1  # it still acts once a worker comes
    assert w.job(jid).status == Status.POLLING
