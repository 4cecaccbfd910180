"""The steps use what the fleet learned: the submit's first poll and a pending poll's next one
are aimed at the job's likely completion, a queue that moved is measured, a completion is
learned; with nothing learned, the schedule is as before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tasks import names, steps
from tasks.nanogpt import validation
from tasks.nanogpt.parsing import AudioLink, Pending, StatusResult, Ticket
from tasks.pacing import learning, schedule
from tasks.pacing.learning import Learning
from tasks.record.jobs import KEY_PREFIX, WAIT_KEY
from tests.support.budget import Clock
from tests.support.ctx import make_ctx

MODEL = "Aim-Model"
INTERVAL = 3.0
ENV = {"TTS_POLL_INTERVAL": str(INTERVAL), "TTS_POLL_MAX_INTERVAL": "30"}
UNIFORM = [20.0 + 40.0 * i / 99 for i in range(100)]  # generations of 20-60 s


@dataclass
class Upstream:
    status_answer: StatusResult

    def submit(self, request: validation.SubmitRequest) -> Ticket:
        return Ticket(f"run-{uuid.uuid4().hex}", MODEL, 0.01, "USD")

    def status(self, poll: validation.PollRequest) -> StatusResult:
        return self.status_answer


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    redis_client.delete(*learning.keys(redis_client))
    yield redis_client
    redis_client.delete(*learning.keys(redis_client))
    ours = list(redis_client.scan_iter(f"{KEY_PREFIX}aim-*"))
    if ours:
        redis_client.delete(*ours)
        redis_client.zrem(WAIT_KEY, *(k.removeprefix(KEY_PREFIX) for k in ours))


def teach(client: redis.Redis, clock: Clock, gens: list[float]) -> None:
    learned = Learning(client, clock=clock)
    for g in gens:
        learned.record_finished(MODEL, g, g)


def submit(client: redis.Redis, clock: Clock) -> tuple[str, float]:
    """Submit a job; (its id, seconds until its first poll is parked for)."""
    ctx, _ = make_ctx(client, env=ENV, clock=clock, upstream=Upstream(Pending("pending", None)))
    jid = f"aim-{uuid.uuid4().hex}"
    steps.submit(ctx, steps.Delivery(names.SUBMIT_TTS, "t1"), "Hello", MODEL, job_id=jid)
    due = client.zscore(WAIT_KEY, jid)
    assert due is not None
    return jid, due - clock()


def test_without_learning_the_first_poll_comes_one_interval_after_the_submit(
    client: redis.Redis,
) -> None:
    _, first_s = submit(client, Clock())
    assert INTERVAL * (1 - schedule.JITTER) - 1e-6 <= first_s <= INTERVAL + 1e-6


def test_with_generations_learned_the_first_poll_waits_for_the_earliest(
    client: redis.Redis,
) -> None:
    clock = Clock()
    teach(client, clock, UNIFORM)
    _, first_s = submit(client, clock)
    assert 20.0 + INTERVAL * (1 - schedule.JITTER) - 1e-6 <= first_s <= 21.0 + INTERVAL + 1e-6


def poll_once(client: redis.Redis, clock: Clock, jid: str, answer: StatusResult) -> float | None:
    """Run the job's due poll at ``clock`` with ``answer``; seconds until the next is due."""
    ctx, _ = make_ctx(client, env=ENV, clock=clock, upstream=Upstream(answer))
    job = ctx.jobs.get(jid)
    assert job is not None
    assert job.token is not None
    steps.poll(
        ctx,
        steps.Delivery(names.POLL_TTS, f"p-{uuid.uuid4().hex}"),
        job.run_id,
        MODEL,
        job_id=jid,
        lease=job.token,
        seq=int(job.seq or 0),
    )
    due = client.zscore(WAIT_KEY, jid)
    return None if due is None else due - clock()


def test_a_pending_poll_at_the_head_is_aimed_and_a_completion_is_learned(
    client: redis.Redis,
) -> None:
    clock = Clock()
    teach(client, clock, UNIFORM)
    jid, first_s = submit(client, clock)
    clock.advance(first_s)  # about 23 s after the submit: generating, not done
    next_s = poll_once(client, clock, jid, Pending("pending", 0))
    assert next_s is not None
    # Inside the distribution: about one interval (jitter takes at most 20 % of one off).
    assert INTERVAL * (1 - schedule.JITTER) - 1e-6 <= next_s <= INTERVAL + 1.0
    clock.advance(next_s)
    done = AudioLink("http://127.0.0.1/a.wav", "audio/wav", None)
    poll_once(client, clock, jid, done)
    assert client.hget(KEY_PREFIX + jid, "status") == "downloading"
    learned = Learning(client, clock=clock).fleet(MODEL).generation_s
    assert len(learned) == len(UNIFORM) + 1
    # Counted from the submit (its start, as it was never seen queued): it ended after the
    # pending answer and by the completed one (tasks/pacing/censoring.py reads it as a time).
    raw = client.lindex(learning.key(MODEL, "generation-s"), 0)
    after, by = (float(x) for x in (raw.decode() if isinstance(raw, bytes) else raw).split(":"))
    assert after == pytest.approx(first_s, abs=1e-3)
    assert by == pytest.approx(first_s + next_s, abs=1e-3)
    assert first_s - 1e-3 <= learned[0] <= first_s + next_s + 1e-3


def test_a_queue_that_moved_is_measured_for_the_fleet(client: redis.Redis) -> None:
    clock = Clock()
    jid, first_s = submit(client, clock)
    clock.advance(first_s)
    poll_once(client, clock, jid, Pending("pending", 10))
    clock.advance(4.0)
    poll_once(client, clock, jid, Pending("pending", 6))  # 4 places in 4 s
    clock.advance(learning.CACHE_S)
    assert Learning(client, clock=clock).fleet(MODEL).s_per_place() == pytest.approx(1.0)


def test_a_job_submitted_behind_a_line_waits_for_it(client: redis.Redis) -> None:
    clock = Clock()
    teach(client, clock, UNIFORM)
    learned = Learning(client, clock=clock)
    for _ in range(learning.MIN_MOVES):
        learned.record_move(MODEL, 1, 0.25)  # a place every 0.25 s, at best and as a rule
    learned.record_position(MODEL, 200, clock())  # a job 200 places back, just now
    _, first_s = submit(client, clock)
    # As a queued job's poll: half the time to the head (25 s), longer than the earliest
    # generations' 20 s and an interval.
    assert first_s == pytest.approx(
        schedule.ARRIVAL_FRACTION * 200 * 0.25, abs=INTERVAL * schedule.JITTER + 1e-6
    )
