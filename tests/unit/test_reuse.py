"""Identical requests served once (TTS_REUSE_TTL): the key, and the steps against a real Redis.

The steps run in-process (tests/support/ctx.py): every message a step publishes lands in an
outbox, and :class:`Pipeline` runs them one by one, so a test sees each job through its
submit, download and notify, and counts the POSTs NanoGPT got.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tasks import errors, names, steps
from tasks.audio.storage import StoredAudio
from tasks.nanogpt import validation
from tasks.nanogpt.fingerprint import normalised_text, reuse_key
from tasks.nanogpt.parsing import AudioLink
from tasks.record.contract import DUE_KEY, KEY_PREFIX, WAIT_KEY
from tasks.record.reuse import Verdict, followers_of, key_of
from tasks.record.states import Status
from tasks.steps import reuse as reuse_step
from tasks.steps.outcomes import fail
from tasks.webhooks.delivery import outcome_body
from tests.support.ctx import Outbox, Sent, make_ctx

MODEL = "Kokoro-82m"


def request(text: str = "Hello there", **options: Any) -> validation.SubmitRequest:
    return validation.submit_request(text, options.pop("model", MODEL), **options)


# --- the key ----------------------------------------------------------------------------------


def test_normalisation_is_nfc_and_collapsed_whitespace() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert normalised_text(decomposed) == normalised_text(composed) == composed
    assert normalised_text("  Hello,\t\n world\u00a0 again ") == "Hello, world again"
    # Case and punctuation are what is spoken: kept.
    assert normalised_text("Hello!") != normalised_text("hello!")


def test_equal_requests_share_a_key() -> None:
    key = reuse_key(request("Hello  there", voice="alloy", speed=1))
    assert key == reuse_key(request(" Hello there\n", voice="alloy", speed=1.0))
    assert len(key) == 64
    assert int(key, 16) >= 0  # hex


def test_text_is_not_in_the_key() -> None:
    key = reuse_key(request("a rather distinctive sentence"))
    assert "distinctive" not in key


@pytest.mark.parametrize(
    "other",
    [
        {"voice": "nova"},
        {"model": "Elevenlabs-Turbo-V2.5"},
        {"speed": 1.25},
        {"response_format": "wav"},
        {"instructions": "whisper"},
        {"stability": 0.5},
        {"similarity_boost": 0.5},
        {"style": 0.5},
    ],
)
def test_another_voice_or_option_is_another_key(other: dict[str, Any]) -> None:
    base = {"voice": "alloy", "speed": 1.0}
    assert reuse_key(request(**base)) != reuse_key(request(**{**base, **other}))


def test_the_tenant_is_part_of_the_key() -> None:
    """Reuse stays within a tenant; a job naming none keeps the key made before tenants."""
    key = reuse_key(request())
    assert reuse_key(request(), None) == key
    assert len({key, reuse_key(request(), "acme"), reuse_key(request(), "globex")}) == 3


def test_reuse_flag_is_not_part_of_the_key_nor_sent() -> None:
    off = request(reuse=False)
    assert reuse_key(off) == reuse_key(request())
    assert "reuse" not in off.body()
    assert off.steering() == {"reuse": False}
    assert request().steering() == {}


def test_reuse_must_be_a_flag() -> None:
    with pytest.raises(errors.InvalidInput):
        validation.submit_request("x", MODEL, reuse="yes")


# --- the steps --------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 2_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Upstream:
    """NanoGPT answering each POST with an audio link (or a scripted failure), counting them."""

    def __init__(self) -> None:
        self.posts: list[str] = []
        self.fail_next: list[errors.TTSError] = []

    def submit(self, req: validation.SubmitRequest) -> AudioLink:
        self.posts.append(req.text)
        if self.fail_next:
            raise self.fail_next.pop(0)
        return AudioLink(
            audio_url=f"https://audio.example/{len(self.posts)}.wav", content_type="audio/wav"
        )

    def status(self, poll: Any) -> Any:
        raise AssertionError("no status call: the audio comes with the POST")


def fetch(url: str, *, store: Any, job_id: str, max_bytes: int, timeout_s: float) -> StoredAudio:
    name = url.rsplit("/", 1)[1]
    return StoredAudio("audio/wav", 10, "0" * 64, f"file:///a/{name}", path=f"/a/{name}")


class Pipeline:
    """The steps of many jobs, their messages run in order from one outbox."""

    def __init__(
        self, client: redis.Redis, *, ttl_s: int = 3600, env: dict[str, str] | None = None
    ) -> None:
        self.clock = Clock()
        self.upstream = Upstream()
        self.hooks: list[dict[str, Any]] = []
        self.outbox = Outbox()
        self.job_ids: set[str] = set()
        self.ctx, _ = make_ctx(
            client,
            env={"TTS_REUSE_TTL": str(ttl_s), **(env or {})},
            clock=self.clock,
            upstream=self.upstream,
            fetch=fetch,
            audio_store=_FileStore(),
            webhook=self._hook,
            outbox=self.outbox,
        )

    def _hook(self, url: str, body: dict[str, Any], *, msg_id: str) -> int:
        self.hooks.append(body)
        return 200

    def submit(self, job_id: str, text: str = "Hello there", **options: Any) -> None:
        self.job_ids.add(job_id)
        d = steps.Delivery(names.SUBMIT_TTS, job_id)
        steps.submit(
            self.ctx, d, text, MODEL, job_id=job_id, notify_url="https://app.example/h", **options
        )

    def run(self, *, only: Callable[[Sent], bool] = lambda s: True) -> None:
        """Run the outbox's messages (and those they publish) until none is left."""
        while True:
            todo = [s for s in self.outbox.sent if only(s)]
            if not todo:
                return
            sent = todo[0]
            self.outbox.sent.remove(sent)
            step = steps.STEPS[sent.name]
            task_id = sent.task_id or uuid.uuid4().hex
            step(self.ctx, steps.Delivery(sent.name, task_id), *sent.args, **sent.kwargs)

    def job(self, job_id: str) -> Any:
        job = self.ctx.jobs.get(job_id)
        assert job is not None
        return job


class _FileStore:
    def fresh(self, audio: dict[str, Any]) -> dict[str, Any]:
        return audio


def clean(client: redis.Redis, p: Pipeline) -> None:
    """Take this test's jobs out of the shared Redis (other tests scan the shared sets)."""
    for jid in p.job_ids:
        client.delete(KEY_PREFIX + jid, f"tts:progress:{jid}")
        client.zrem(DUE_KEY, jid)
        client.zrem(WAIT_KEY, jid)
    for key in client.scan_iter("tts:reuse:*"):
        client.delete(key)


@pytest.fixture
def pipe(redis_client: redis.Redis) -> Iterator[Pipeline]:
    p = Pipeline(redis_client)
    yield p
    clean(redis_client, p)


def ids(n: int) -> list[str]:
    return [f"ru-{uuid.uuid4().hex}" for _ in range(n)]


def test_followers_wait_then_reuse_the_leaders_audio(pipe: Pipeline) -> None:
    leader, *followers = ids(4)
    pipe.submit(leader)
    for jid in followers:
        pipe.submit(jid)
    assert pipe.upstream.posts == ["Hello there"]
    for jid in followers:
        job = pipe.job(jid)
        assert (job.status, job.reuse_leader) == (Status.SUBMITTING, leader)
    pipe.run()  # the leader's download and notify; the notify wakes the followers
    assert len(pipe.upstream.posts) == 1
    source = pipe.job(leader).outcome["audio"]
    for jid in followers:
        job = pipe.job(jid)
        assert job.status == Status.COMPLETED
        assert job.outcome["audio"] == source
        assert job.outcome["reused_from"] == leader
        assert job.cost == 0.0
    by_job = {h["job_id"]: h for h in pipe.hooks}
    assert sorted(by_job) == sorted([leader, *followers])  # one webhook each
    assert len(pipe.hooks) == 4
    assert by_job[followers[0]]["reused_from"] == leader
    assert by_job[followers[0]]["cost"] == 0.0
    assert "reused_from" not in by_job[leader]


def test_completed_within_ttl_is_reused_without_a_post(pipe: Pipeline) -> None:
    first, later, too_late = ids(3)
    pipe.submit(first)
    pipe.run()
    pipe.clock.now += 3000
    pipe.submit(later, text="  Hello\nthere ")
    pipe.run()
    assert len(pipe.upstream.posts) == 1
    assert pipe.job(later).outcome["reused_from"] == first
    pipe.clock.now += 700  # past the first job's end + 3600 s
    pipe.submit(too_late)
    assert len(pipe.upstream.posts) == 2
    pipe.run()
    assert "reused_from" not in pipe.job(too_late).outcome


def test_another_voice_and_reuse_off_make_their_own_post(pipe: Pipeline) -> None:
    first, other_voice, off = ids(3)
    pipe.submit(first, voice="alloy")
    pipe.submit(other_voice, voice="nova")
    pipe.submit(off, voice="alloy", reuse=False)
    assert len(pipe.upstream.posts) == 3
    pipe.run()
    for jid in (first, other_voice, off):
        assert "reused_from" not in pipe.job(jid).outcome
    assert pipe.job(off).reuse_key is None


def test_another_tenant_makes_its_own_post(pipe: Pipeline) -> None:
    first, same_tenant, other_tenant, no_tenant = ids(4)
    pipe.submit(first, tenant="acme")
    pipe.run()
    pipe.submit(same_tenant, tenant="acme")
    pipe.submit(other_tenant, tenant="globex")
    pipe.submit(no_tenant)
    pipe.run()
    assert len(pipe.upstream.posts) == 3
    assert pipe.job(same_tenant).outcome["reused_from"] == first
    for jid in (other_tenant, no_tenant):
        assert "reused_from" not in pipe.job(jid).outcome


def test_off_by_default(redis_client: redis.Redis) -> None:
    p = Pipeline(redis_client, ttl_s=0)
    a, b = ids(2)
    p.submit(a)
    p.submit(b)
    assert len(p.upstream.posts) == 2
    assert p.job(a).reuse_key is None
    assert not list(redis_client.scan_iter("tts:reuse:*"))
    clean(redis_client, p)


def test_a_leader_that_ended_before_anyone_followed_is_not_followed(pipe: Pipeline) -> None:
    leader, f1, f2 = ids(3)
    pipe.upstream.fail_next.append(errors.SubmitUnconfirmed("read timeout after sending"))
    pipe.submit(leader)
    assert pipe.job(leader).outcome["error"]["code"] == "SUBMIT_UNCONFIRMED"
    pipe.submit(f1)
    pipe.submit(f2)
    assert len(pipe.upstream.posts) == 2
    pipe.run()
    assert pipe.job(f1).status == pipe.job(f2).status == Status.COMPLETED
    assert pipe.job(f2).outcome["reused_from"] == f1


@pytest.mark.parametrize(
    "failure",
    [
        errors.Cancelled("cancelled by the caller"),
        errors.SubmitUnconfirmed("no answer after sending"),
        errors.DeadlineExceeded("deadline reached"),
        errors.UpstreamFailed("status 'error'"),
    ],
    ids=lambda e: e.code,
)
def test_followers_of_a_leader_failing_not_for_the_content_go_on(
    pipe: Pipeline, failure: errors.TTSError
) -> None:
    leader, f1, f2 = ids(3)
    pipe.submit(leader)  # in flight: its download waits in the outbox
    pipe.submit(f1)
    pipe.submit(f2)
    fail(pipe.ctx, leader, failure)
    pipe.run()
    assert pipe.job(leader).outcome["error"]["code"] == failure.code
    assert len(pipe.upstream.posts) == 2  # one follower led, the other reused its audio
    outcomes = [pipe.job(j).outcome for j in (f1, f2)]
    assert all(o["type"] == "tts.completed" for o in outcomes)
    assert sorted("reused_from" in o for o in outcomes) == [False, True]
    assert sorted(h["job_id"] for h in pipe.hooks) == sorted([leader, f1, f2])


def test_a_follower_outliving_its_own_deadline_takes_over_from_a_timed_out_leader(
    pipe: Pipeline,
) -> None:
    """The leader's deadline is not the followers': one waiting longer than its own submit
    deadline still makes its own POST when the leader ends as TIMEOUT."""
    leader, follower = ids(2)
    pipe.submit(leader)
    pipe.submit(follower)
    own_deadline = pipe.job(follower).deadline_at
    pipe.clock.now += pipe.ctx.settings.poll_timeout_s + 100
    assert pipe.clock.now > own_deadline
    fail(pipe.ctx, leader, errors.DeadlineExceeded("deadline reached"))
    pipe.run()
    job = pipe.job(follower)
    assert job.status == Status.COMPLETED
    assert "reused_from" not in job.outcome
    assert job.deadline_at == pipe.clock.now + pipe.ctx.settings.poll_timeout_s
    assert len(pipe.upstream.posts) == 2


def test_a_content_verdict_is_shared_with_followers_only(pipe: Pipeline) -> None:
    leader, follower, later = ids(3)
    pipe.submit(leader, text="Bad words")
    pipe.submit(follower, text="Bad words")
    assert pipe.job(follower).reuse_leader == leader
    # The leader's run is refused for its content (as a status call would find it).
    fail(pipe.ctx, leader, errors.ContentPolicyViolation("Content rejected by provider."))
    pipe.run()
    job = pipe.job(follower)
    assert job.outcome["error"]["code"] == "CONTENT_POLICY_VIOLATION"
    assert job.outcome["reused_from"] == leader
    assert job.cost == 0.0
    assert len(pipe.upstream.posts) == 1
    # A later identical submit did not follow it: it asks NanoGPT again.
    pipe.submit(later, text="Bad words")
    assert len(pipe.upstream.posts) == 2


def test_the_same_message_twice_makes_one_follower(
    pipe: Pipeline, redis_client: redis.Redis
) -> None:
    leader, follower = ids(2)
    pipe.submit(leader)
    pipe.submit(follower)
    pipe.submit(follower)  # a redelivery, or the reconciler's re-send
    pipe.submit(leader)  # the leader's own message again: still the one leader
    key = pipe.job(follower).reuse_key
    assert redis_client.zrange(followers_of(key), 0, -1) == [follower]
    assert redis_client.get(key_of(key)) == leader
    assert len(pipe.upstream.posts) == 1
    # Waiting is not a delivery: a follower re-sent many times is not taken for poison.
    for _ in range(10):
        pipe.submit(follower)
    assert pipe.job(follower).status == Status.SUBMITTING
    pipe.run()
    assert pipe.job(follower).outcome["reused_from"] == leader
    assert [h["job_id"] for h in pipe.hooks].count(follower) == 1


def test_decide_run_twice_answers_the_same(pipe: Pipeline, redis_client: redis.Redis) -> None:
    """The decision's reply lost, the script run again: the same verdict, one member."""
    leader, follower = ids(2)
    pipe.submit(leader)
    pipe.submit(follower)
    job = pipe.job(follower)
    key = job.reuse_key
    assert key is not None

    def decide(jid: str) -> Any:
        return pipe.ctx.jobs.decide_reuse(
            jid,
            jid,
            key,
            ttl_s=3600,
            hold_s=9000,
            check_at=pipe.clock.now + 60,
            deliveries=1,
            shared=(),
            deadline_at=pipe.clock.now + 900,
            record_ttl_s=5000,
        )

    first, again = decide(follower), decide(follower)
    assert (
        (first.verdict, first.source)
        == (again.verdict, again.source)
        == (
            Verdict.FOLLOW,
            leader,
        )
    )
    assert not first.joined  # its submit joined it already: counted once
    assert not again.joined
    assert redis_client.zcard(followers_of(key)) == 1
    assert decide(leader).verdict == Verdict.NONE  # past submitting: nothing to decide


def test_a_follower_is_watched_and_its_lost_wake_up_is_resent(
    pipe: Pipeline, redis_client: redis.Redis
) -> None:
    """A follower holds no message: the reconciler's scan re-sends its submit at its check
    time, which decides again; so a wake-up lost with a dead worker costs a delay only."""
    from tasks.sweeps import reconcile

    leader, follower = ids(2)
    pipe.submit(leader)
    pipe.submit(follower)
    score = redis_client.zscore(DUE_KEY, follower)
    assert score == pipe.clock.now + reuse_step.FOLLOWER_RECHECK_S
    assert redis_client.zscore(WAIT_KEY, follower) is None  # no budget wait: no token taken
    # The leader completes, but its notify (and so the wake-up) is lost.
    pipe.run(only=lambda s: s.name == names.DOWNLOAD_AUDIO)
    pipe.outbox.sent.clear()
    pipe.clock.now += reuse_step.FOLLOWER_RECHECK_S + 1
    reconcile.scan(pipe.ctx)
    pipe.run(only=lambda s: s.name == names.SUBMIT_TTS and s.kwargs.get("job_id") == follower)
    job = pipe.job(follower)
    assert job.outcome["reused_from"] == leader
    assert len(pipe.upstream.posts) == 1


def test_store_failing_mid_decision_loses_nothing(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job store times out on the decision (run or not): the step raises, so its message
    is retried (tasks/adapters/acks.py), and the retry decides the same way."""
    leader, follower = ids(2)
    pipe.submit(leader)
    real = pipe.ctx.jobs.decide_reuse

    def ran_then_timed_out(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(pipe.ctx.jobs, "decide_reuse", ran_then_timed_out)
    with pytest.raises(redis.TimeoutError):
        pipe.submit(follower)
    monkeypatch.setattr(pipe.ctx.jobs, "decide_reuse", real)
    pipe.submit(follower)  # the retry
    assert pipe.job(follower).reuse_leader == leader
    pipe.run()
    assert pipe.job(follower).outcome["reused_from"] == leader
    assert len(pipe.upstream.posts) == 1


def test_the_reused_webhook_body() -> None:
    body = outcome_body(
        "j2",
        None,
        MODEL,
        {"type": "tts.completed", "audio": {"url": "file:///a"}, "reused_from": "j1"},
        cost=0.0,
    )
    assert body["reused_from"] == "j1"
    assert body["cost"] == 0.0


def test_job_record_keys_use_the_prefix() -> None:
    assert key_of("ab").startswith("tts:reuse:")
    assert KEY_PREFIX == "tts:job:"


def test_a_job_id_used_again_is_not_taken_for_the_leader(
    pipe: Pipeline, redis_client: redis.Redis
) -> None:
    """The index names the leader by job id; once the leader's record expired, a caller may use
    that id again for another text. A submit of the first text must not follow (or reuse) it."""
    leader, follower = ids(2)
    pipe.submit(leader)
    key = pipe.job(leader).reuse_key
    redis_client.delete(KEY_PREFIX + leader)  # expired...
    pipe.submit(leader, text="Something else entirely")  # ...and the id used again, in flight
    assert pipe.job(leader).reuse_key != key
    pipe.submit(follower)
    assert pipe.job(follower).reuse_leader is None
    assert redis_client.get(key_of(key)) == follower  # it leads
    assert len(pipe.upstream.posts) == 3


def test_reused_and_following_jobs_take_no_budget_token(redis_client: redis.Redis) -> None:
    """The budget has one token (burst 1, a rate that refills none in the test): the leader's
    POST takes it; its followers, then a later identical submit, wait or reuse without asking
    for one (a submit that asked would be parked in tts:wait)."""
    for key in redis_client.scan_iter("tts:budget*"):
        redis_client.delete(key)
    p = Pipeline(redis_client, env={"TTS_UPSTREAM_RATE": "0.0001", "TTS_UPSTREAM_BURST": "1"})
    leader, f1, f2, later, other = ids(5)
    p.submit(leader)
    p.submit(f1)
    p.submit(f2)
    p.run()
    p.submit(later)
    p.submit(other, text="Another text")  # its own POST: no token left, so it waits
    assert len(p.upstream.posts) == 1
    for jid in (f1, f2, later):
        assert p.job(jid).outcome["reused_from"] == leader
        assert redis_client.zscore(WAIT_KEY, jid) is None
    assert redis_client.zscore(WAIT_KEY, other) is not None
    clean(redis_client, p)
    for key in redis_client.scan_iter("tts:budget*"):
        redis_client.delete(key)
