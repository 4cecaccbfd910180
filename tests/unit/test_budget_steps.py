"""The budget where it is spent: the poll and submit steps, the releaser's turn
(tasks/sweeps/granting.py) and the reconciler, run in-process against a real Redis, a frozen fake
clock and fake NanoGPTs that count (or forbid) every call.

The budget is 1 call per second with a burst of 1, so one spend empties it until the test moves
the clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from tasks import errors, names, steps
from tasks.nanogpt import validation
from tasks.nanogpt.parsing import Pending, StatusResult, Ticket
from tasks.pacing.budget import BUDGET_KEY, GRANT_TTL_S
from tasks.record.jobs import DUE_KEY, KEY_PREFIX, WAIT_KEY, Job, submit_score
from tasks.record.states import Status
from tasks.steps.context import Ctx
from tasks.sweeps import granting, reconcile
from tests.support.budget import EPOCH, SHARED_KEYS, Clock
from tests.support.ctx import Outbox, Sent, make_ctx

MODEL = "Kokoro-82m"
ENV = {"TTS_UPSTREAM_RATE": "1", "TTS_UPSTREAM_BURST": "1"}
# NanoGPT's words for a per-key daily limit: what the outcome must pass on.
DAILY = "Daily request limit exceeded"


@dataclass
class Upstream:
    """NanoGPT, counting every call. While ``closed``, any call fails the test: a call the
    budget did not allow must not reach it. ``submit_answer``/``status_answer`` may be an
    exception to raise."""

    closed: bool = False
    submit_answer: Any = field(default_factory=lambda: Ticket("run-bs", MODEL, 0.01, "USD"))
    status_answer: Any = field(default_factory=lambda: Pending("pending", 3))
    posts: int = 0
    statuses: int = 0

    def submit(self, request: validation.SubmitRequest) -> Any:
        if self.closed:
            raise AssertionError("a POST was sent without budget")
        self.posts += 1
        if isinstance(self.submit_answer, Exception):
            raise self.submit_answer
        return self.submit_answer

    def status(self, poll: validation.PollRequest) -> StatusResult:
        if self.closed:
            raise AssertionError("a status call was made without budget")
        self.statuses += 1
        if isinstance(self.status_answer, Exception):
            raise self.status_answer
        answer: StatusResult = self.status_answer
        return answer


@dataclass
class World:
    ctx: Ctx
    outbox: Outbox
    upstream: Upstream
    clock: Clock
    client: redis.Redis

    def job(self, jid: str) -> Job:
        job = self.ctx.jobs.get(jid)
        assert job is not None
        return job

    def raw(self, jid: str, name: str) -> str | None:
        value = self.client.hget(KEY_PREFIX + jid, name)
        return None if value is None else str(value)

    def empty_the_budget(self) -> None:
        assert self.ctx.budget.spend("bs-someone-else", "") == 0.0
        assert self.ctx.budget.free()[0] == 0

    def polling(self, *, deadline_in_s: float = 900.0) -> tuple[str, str]:
        """A polling job whose poll 0 is due (its message is in flight)."""
        jid = new_id()
        now = self.clock()
        token = self.ctx.jobs.start_chain(
            jid,
            {"run_id": jid, "model": MODEL},
            deadline_at=now + deadline_in_s,
            check_at=now + 60,
        )
        assert token is not None
        return jid, token

    def poll(self, jid: str, token: str, seq: int = 0, task_id: str = "poll-1") -> object:
        d = steps.Delivery(names.POLL_TTS, task_id)
        return steps.poll(self.ctx, d, jid, MODEL, job_id=jid, lease=token, seq=seq)

    def accept_submit(self, task_id: str) -> None:
        """The record a worker makes when it receives a caller's submit (no job_id)."""
        request = validation.submit_request("Hello", MODEL)
        assert steps.accept_submit(self.ctx, task_id, request, None, owner=task_id)

    def submit(self, task_id: str) -> object:
        """A caller's submit, as sent: no job_id, so the job is known by the task id."""
        return steps.submit(self.ctx, steps.Delivery(names.SUBMIT_TTS, task_id), "Hello", MODEL)

    def run(self, sent: Sent) -> object:
        """Run a message the outbox holds, as a worker would."""
        d = steps.Delivery(sent.name, sent.task_id or f"task-{uuid.uuid4().hex}")
        step = {names.POLL_TTS: steps.poll, names.SUBMIT_TTS: steps.submit}[sent.name]
        return step(self.ctx, d, *sent.args, **sent.kwargs)


def new_id() -> str:
    return f"bs-{uuid.uuid4().hex}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    def wipe() -> None:
        redis_client.delete(*SHARED_KEYS)
        ours = list(redis_client.scan_iter(f"{KEY_PREFIX}bs-*"))
        if ours:
            redis_client.delete(*ours)

    wipe()
    yield redis_client
    wipe()


def world(client: redis.Redis, env: dict[str, str]) -> World:
    clock, upstream = Clock(), Upstream()
    ctx, outbox = make_ctx(client, env=env, clock=clock, upstream=upstream)
    assert ctx.budget.on
    return World(ctx, outbox, upstream, clock, client)


@pytest.fixture
def w(client: redis.Redis) -> World:
    return world(client, ENV)


@pytest.fixture
def w2(client: redis.Redis) -> World:
    """A budget of two tokens, for choosing who gets them."""
    return world(client, {**ENV, "TTS_UPSTREAM_BURST": "2"})


# --- a call without budget is parked, not made, and not a retry ---------------------------------


def test_a_poll_without_budget_waits_in_line_and_is_never_poisoned(w: World) -> None:
    jid, token = w.polling()
    w.empty_the_budget()
    w.upstream.closed = True
    deferred = metric("tts_budget_deferred_total", kind="status")
    runs = 10
    assert w.ctx.settings.max_deliveries < runs

    for _ in range(runs):  # the very same message, again and again
        result = w.poll(jid, token)
        assert result == jid  # not a Retry: nothing waits in a worker
        job = w.job(jid)
        assert (job.status, job.outcome, job.seq) == (Status.POLLING, None, "0")
        assert w.client.zscore(WAIT_KEY, jid) == w.clock()  # due now, for the releaser
        assert w.raw(jid, "delivery_count") == "0"  # the delivery it counted, taken back

    assert w.upstream.statuses == 0
    assert w.outbox.sent == []
    assert metric("tts_budget_deferred_total", kind="status") == deferred + runs

    # A token comes: the releaser grants it to the job and sends its poll, which spends the
    # grant (the budget is empty again by then) and makes exactly one status call.
    w.clock.advance(1.0)
    w.upstream.closed = False
    assert granting.release(w.ctx, rand=lambda: 0.5) == 1
    assert w.ctx.budget.free()[0] == 0
    [sent] = w.outbox.sent
    assert sent.name == names.POLL_TTS
    assert sent.kwargs == {"job_id": jid, "lease": token, "seq": 0}
    assert w.run(sent) == jid
    assert w.upstream.statuses == 1
    job = w.job(jid)
    assert (job.status, job.seq, job.grant) == (Status.POLLING, "1", None)
    assert (w.client.zscore(WAIT_KEY, jid) or 0) > w.clock()  # the next poll, parked for later


def test_a_submit_without_budget_waits_then_is_granted_and_posted_once(w: World) -> None:
    task_id = new_id()
    w.empty_the_budget()
    w.upstream.closed = True

    for _ in range(10):  # a redelivered copy waits as well, in the same place in line
        assert w.submit(task_id) == task_id
        w.clock.advance(0.05)
    job = w.job(task_id)
    assert (job.status, job.posts, job.outcome) == (Status.SUBMITTING, 0, None)
    assert w.client.zscore(WAIT_KEY, task_id) == submit_score(EPOCH)
    assert w.raw(task_id, "delivery_count") == "0"
    assert w.outbox.sent == []

    w.clock.advance(1.0)
    w.upstream.closed = False
    assert granting.release(w.ctx, rand=lambda: 0.5) == 1
    [sent] = w.outbox.sent
    assert (sent.name, sent.task_id, sent.args) == (names.SUBMIT_TTS, task_id, ("Hello", MODEL))
    assert w.client.zscore(WAIT_KEY, task_id) is None
    assert w.ctx.budget.free()[0] == 0  # the released submit must spend its grant

    assert w.run(sent) == task_id
    assert w.upstream.posts == 1
    job = w.job(task_id)
    assert (job.status, job.posts, job.grant) == (Status.POLLING, 1, None)
    # The same message once more: a duplicate, no second POST.
    assert w.run(sent) == task_id
    assert w.upstream.posts == 1


# --- NanoGPT's 429 whose wait would pass the deadline ------------------------------------------


def test_a_poll_429_past_the_deadline_ends_the_job_rate_limited(w: World) -> None:
    jid, token = w.polling(deadline_in_s=30)
    w.upstream.status_answer = errors.RateLimited(DAILY, retry_after_s=3600)

    assert w.poll(jid, token) == jid

    job = w.job(jid)
    assert job.status == Status.FAILED
    assert job.outcome is not None
    error = job.outcome["error"]
    assert error["code"] == "RATE_LIMITED"
    assert DAILY in error["message"]
    assert w.upstream.statuses == 1
    assert w.outbox.names() == [names.NOTIFY]
    assert w.client.hget(BUDGET_KEY, "ref_n") == "1"  # the refusal counts towards lowering


def test_a_poll_429_that_clears_before_the_deadline_is_retried(w: World) -> None:
    jid, token = w.polling(deadline_in_s=900)
    w.upstream.status_answer = errors.RateLimited(DAILY, retry_after_s=7)

    result = w.poll(jid, token)

    assert isinstance(result, steps.Retry)
    assert result.wait_s >= 7
    assert w.job(jid).status == Status.POLLING


def test_a_poll_retry_that_waited_for_budget_keeps_its_count(w: World) -> None:
    """CI's 5xx outage: failing polls that came back as fresh messages (Celery's count at 0)
    retried at the base backoff for ever and took the whole budget, so one job waited 31 s.
    The record counts the retries, so the backoff grows and the limit holds across deferrals."""
    jid, token = w.polling(deadline_in_s=900)
    w.upstream.status_answer = errors.UpstreamUnavailable("HTTP 500")
    for n in range(1, 4):
        w.clock.advance(2.0)  # a token for each; every call is a fresh message (retries 0)
        result = w.poll(jid, token, task_id=f"poll-{n}")
        assert isinstance(result, steps.Retry)
        assert w.job(jid).tries == n
    # The third retry's backoff is from retry number 3, not 1: at least half of base x 2**2.
    assert result.wait_s >= 2.0


def test_a_submit_429_past_the_deadline_ends_the_job_rate_limited(w: World) -> None:
    task_id = new_id()
    w.accept_submit(task_id)
    w.clock.advance(w.ctx.settings.poll_timeout_s - 30)  # waited for budget nearly all along
    w.upstream.submit_answer = errors.RateLimited(DAILY, retry_after_s=3600)

    assert w.submit(task_id) == task_id

    job = w.job(task_id)
    assert job.status == Status.FAILED
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "RATE_LIMITED"
    assert DAILY in job.outcome["error"]["message"]
    assert (w.upstream.posts, job.posts) == (1, 1)
    assert w.client.hget(BUDGET_KEY, "ref_n") == "1"  # the refusal counts towards lowering
    # Redelivered: the job has ended; nothing is sent again.
    assert w.submit(task_id) == task_id
    assert w.upstream.posts == 1


def test_rate_limited_is_a_listed_outcome_code() -> None:
    """OUTCOME_CODES is "every code a job outcome can carry" (tasks/__init__.py exports it)."""
    assert errors.RateLimited.code in errors.OUTCOME_CODES


# --- the reconciler leaves parked jobs alone until their deadline --------------------------------


def test_the_reconciler_leaves_a_parked_submit_until_its_deadline(w: World) -> None:
    task_id = new_id()
    w.empty_the_budget()
    assert w.submit(task_id) == task_id
    assert w.client.zscore(WAIT_KEY, task_id) is not None
    deadline_at = w.job(task_id).deadline_at
    assert deadline_at is not None
    w.ctx.jobs.recheck_at(task_id, w.clock() + 1)  # overdue from then on

    w.clock.advance(100)
    reconcile.scan(w.ctx)
    assert w.outbox.sent == []
    # Parked: not looked at again before its deadline (issue 19: the scan crawled through
    # parked jobs every grace while lost steps waited).
    assert w.client.zscore(DUE_KEY, task_id) == deadline_at
    assert w.client.zscore(WAIT_KEY, task_id) is not None

    w.clock.now = deadline_at
    w.upstream.closed = True  # past its deadline, the job ends without a POST
    reconcile.scan(w.ctx)
    [sent] = w.outbox.sent
    assert (sent.name, sent.task_id) == (names.SUBMIT_TTS, task_id)
    assert w.client.zscore(WAIT_KEY, task_id) is None
    assert w.run(sent) == task_id
    job = w.job(task_id)
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "TIMEOUT"


def test_the_reconciler_leaves_a_parked_poll_until_its_deadline(w: World) -> None:
    jid, token = w.polling(deadline_in_s=600)
    w.empty_the_budget()
    assert w.poll(jid, token) == jid  # deferred: parked, due now
    deadline_at = w.job(jid).deadline_at
    assert deadline_at is not None
    w.ctx.jobs.recheck_at(jid, w.clock() + 1)

    w.clock.advance(100)
    reconcile.scan(w.ctx)
    assert w.outbox.sent == []
    assert w.client.zscore(DUE_KEY, jid) == deadline_at  # parked: watched at its deadline
    assert w.client.zscore(WAIT_KEY, jid) is not None

    w.clock.now = deadline_at + 1
    w.upstream.closed = True
    reconcile.scan(w.ctx)
    [sent] = w.outbox.sent
    assert sent.name == names.POLL_TTS
    assert sent.kwargs == {"job_id": jid, "lease": token, "seq": 0}
    assert w.client.zscore(WAIT_KEY, jid) is None
    assert w.run(sent) == jid
    job = w.job(jid)
    assert job.outcome is not None
    assert job.outcome["error"]["code"] == "TIMEOUT"


# --- the releaser's turn: the tokens go to the polls most likely to find audio -------------------


def parked(w: World, *, due_in_s: float, deadline_in_s: float, **fields: Any) -> tuple[str, str]:
    """A polling job whose poll 1 is parked, with what earlier answers recorded."""
    jid, token = w.polling(deadline_in_s=deadline_in_s)
    now = w.clock()
    assert w.ctx.jobs.advance(jid, token, 0, fields, check_at=now + 600, park_at=now + due_in_s)
    return jid, token


def likely_and_unlikely(w: World) -> tuple[set[str], set[str], str]:
    """Two due polls likely to find audio, three that are not (queued far back, but parked
    earlier and older: due order or age would pick them), and a likely one not yet due."""
    now = w.clock()
    head = {"queue_position": "", "seen_at": now - 30, "gen_start_at": now - 30}
    likely = {
        parked(w, due_in_s=0, deadline_in_s=900, **head)[0],
        # Never answered yet (a chain started by name): as likely as not.
        parked(w, due_in_s=0, deadline_in_s=890)[0],
    }
    far_back = {
        "queue_position": 200,
        "queue_first_position": 200,
        "queue_first_seen_at": now - 100,
        "seen_at": now - 1,
    }
    unlikely = {parked(w, due_in_s=-10, deadline_in_s=300 + i, **far_back)[0] for i in range(3)}
    later = parked(w, due_in_s=60, deadline_in_s=100, **head)[0]
    return likely, unlikely, later


def test_release_grants_the_polls_most_likely_to_find_audio(w2: World) -> None:
    w = w2
    likely, unlikely, later = likely_and_unlikely(w)

    assert granting.release(w.ctx, rand=lambda: 0.5) == 2

    sent = {s.kwargs["job_id"]: s for s in w.outbox.sent}
    assert set(sent) == likely
    assert {s.name for s in sent.values()} == {names.POLL_TTS}
    for jid in likely:
        assert sent[jid].kwargs["seq"] == 1
        assert w.job(jid).grant == "poll:1"
        assert w.client.zscore(WAIT_KEY, jid) is None
        # Should the releaser die now, the reconciler re-sends it after the grace.
        assert w.client.zscore(DUE_KEY, jid) == w.clock() + w.ctx.settings.recovery_grace_s
    for jid in [*unlikely, later]:
        assert w.client.zscore(WAIT_KEY, jid) is not None
        assert w.job(jid).grant is None
    assert metric("tts_budget_tokens") == 2
    assert metric("tts_budget_rate") == 1

    # No token left: the next tick sends nothing.
    w.outbox.sent.clear()
    assert granting.release(w.ctx, rand=lambda: 0.5) == 0
    assert w.outbox.sent == []
    assert metric("tts_budget_tokens") == 0


def test_release_gives_waiting_submits_their_share(w2: World) -> None:
    w = w2
    likely, _, _ = likely_and_unlikely(w)
    task_id = new_id()
    w.accept_submit(task_id)
    assert w.ctx.jobs.defer_submit(
        task_id, task_id, deliveries=1, check_at=w.clock() + 900, queued_at=w.clock()
    )

    # TTS_UPSTREAM_SUBMIT_SHARE 0.5 of 2 tokens: one for the submit, one for the best poll.
    assert granting.release(w.ctx, rand=lambda: 0.0) == 2

    kinds = sorted((s.name, s.kwargs.get("job_id")) for s in w.outbox.sent)
    polls = [jid for name, jid in kinds if name == names.POLL_TTS]
    assert [name for name, _ in kinds] == sorted([names.POLL_TTS, names.SUBMIT_TTS])
    assert len(polls) == 1
    assert polls[0] in likely
    [submit] = [s for s in w.outbox.sent if s.name == names.SUBMIT_TTS]
    assert submit.task_id == task_id


# --- issue 19: background work that grows with the backlog --------------------------------------


def test_parked_polls_stay_out_of_the_way_of_a_lost_step(w: World) -> None:
    """Issue 19: with 6,000 parked polls a lost download was re-sent 65 s late: the parked
    polls stayed on the reconciler's watch at their old check times, every scan (500 jobs)
    re-checked them first, and the lost step waited behind them. Parked, a job is watched only
    at its deadline; the first scan finds the lost step."""
    w.empty_the_budget()
    w.upstream.closed = True
    for _ in range(reconcile.SCAN_LIMIT + 50):
        jid, token = w.polling()
        assert w.poll(jid, token) == jid  # no budget: parked, due now
        assert w.client.zscore(DUE_KEY, jid) == w.job(jid).deadline_at
    lost = new_id()
    # A download whose message died, due a moment after the polls were last checked.
    assert w.ctx.jobs.create(
        lost, {"status": Status.DOWNLOADING}, ttl_s=900, check_at=w.clock() + 61
    )

    w.clock.advance(100)
    assert w.ctx.jobs.overdue(w.clock(), limit=reconcile.SCAN_LIMIT) == [lost]
    assert reconcile.scan(w.ctx) == {"download": 1}
    assert [(s.name, s.args) for s in w.outbox.sent] == [(names.DOWNLOAD_AUDIO, (lost,))]


def test_a_granted_poll_is_watched_again_and_a_redeferred_one_is_not(w: World) -> None:
    """The grant moves the job's check time back to a grace from now (its message may die);
    deferred again, it leaves the watch until its deadline."""
    jid, token = w.polling()
    w.empty_the_budget()
    assert w.poll(jid, token) == jid
    deadline_at = w.job(jid).deadline_at
    assert w.client.zscore(DUE_KEY, jid) == deadline_at

    w.clock.advance(1)
    assert granting.release(w.ctx, rand=lambda: 0.5) == 1
    grace = w.ctx.settings.recovery_grace_s
    assert w.client.zscore(DUE_KEY, jid) == w.clock() + grace
    [sent] = w.outbox.sent
    # Its message waits past the grant's hold; a direct call takes the token meanwhile.
    w.clock.advance(GRANT_TTL_S + 0.5)
    w.empty_the_budget()
    w.upstream.closed = True
    assert w.run(sent) == jid  # no token: parked again, its grant kept
    assert w.raw(jid, "grant") == "poll:0"
    assert w.client.zscore(DUE_KEY, jid) == deadline_at


@pytest.fixture
def fast(client: redis.Redis) -> World:
    """Two tokens that come back within a tenth of a second (10 calls/s, burst 2)."""
    client.delete(granting.LEADER_KEY)
    return world(client, {**ENV, "TTS_UPSTREAM_RATE": "10", "TTS_UPSTREAM_BURST": "2"})


def run_sent(w: World) -> list[str]:
    """Run the steps the releaser sent (each spends its grant); their job ids."""
    sent, w.outbox.sent = list(w.outbox.sent), []
    for s in sent:
        w.run(s)
    return [str(s.kwargs["job_id"]) for s in sent]


def test_one_releaser_grants_for_the_fleet_and_another_takes_over_when_it_stops(
    fast: World,
) -> None:
    """Issue 19: every worker's releaser read and ranked up to 2,000 parked polls each tick.
    One holds the fleet's lock and grants; the others only read the budget, until the lock's
    short TTL runs out after its holder stopped."""
    w = fast
    likely, _, _ = likely_and_unlikely(w)
    first, second = granting.Releasing(), granting.Releasing()
    assert granting.release(w.ctx, rand=lambda: 0.5, state=first) == 2
    assert set(run_sent(w)) == likely

    w.clock.advance(1.0)  # two tokens again, but the lock is held
    assert granting.release(w.ctx, rand=lambda: 0.5, state=second) == 0
    assert w.outbox.sent == []
    assert w.ctx.budget.free()[0] == 2  # nothing promised

    # The holder stops renewing: its lock expires (as after LEADER_TTL_S), the other grants.
    assert w.client.pttl(granting.LEADER_KEY) <= granting.LEADER_TTL_S * 1000
    w.client.delete(granting.LEADER_KEY)
    assert granting.release(w.ctx, rand=lambda: 0.5, state=second) == 2
    assert granting.release(w.ctx, rand=lambda: 0.5, state=first) == 0


def test_the_holder_ranks_once_per_ttl_and_grants_from_that_ranking_between(
    fast: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: ranking 2,000 candidates costs ~70 ms of CPU; done each tick (up to 10 a
    second) it was most of a releaser's work. Ranked once, the ranking serves the ticks of the
    next RANK_TTL_S; a job it names that was parked again for later is not granted early."""
    w = fast
    now = w.clock()
    head = {"queue_position": "", "seen_at": now - 30, "gen_start_at": now - 30}
    jobs = [parked(w, due_in_s=0, deadline_in_s=900 + i, **head) for i in range(8)]
    reads: list[int] = []
    real = granting._candidates
    monkeypatch.setattr(
        granting,
        "_candidates",
        lambda ctx, ids, seen: reads.append(len(ids)) or real(ctx, ids, seen),
    )
    state = granting.Releasing()

    assert granting.release(w.ctx, rand=lambda: 0.5, state=state) == 2
    assert reads == [8]
    granted = run_sent(w)
    # One the ranking names next is served meanwhile and parked again, due in a minute.
    served, token = next((j, t) for j, t in jobs if j not in granted)
    assert w.ctx.jobs.advance(served, token, 1, {}, check_at=now + 900, park_at=now + 60)

    w.clock.advance(granting.RANK_TTL_S / 2)  # two tokens again; the ranking is fresh
    assert w.ctx.budget.free()[0] == 2
    assert granting.release(w.ctx, rand=lambda: 0.5, state=state) == 2
    assert reads == [8]  # not read again
    again = run_sent(w)
    assert served not in again
    assert not set(again) & set(granted)

    w.clock.advance(granting.RANK_TTL_S)
    assert granting.release(w.ctx, rand=lambda: 0.5, state=state) == 2
    assert reads == [8, 3]  # ranked afresh (the three still due): the ranking had aged out


def test_a_ranking_parses_again_only_the_records_that_changed(w: World) -> None:
    """The next ranking reuses what it parsed of a record read the same, and parses a record
    whose fields changed (here without a new score in the wait set) afresh."""
    now = w.clock()
    head = {"queue_position": "", "seen_at": now - 30, "gen_start_at": now - 30}
    (a, _), (b, _) = (parked(w, due_in_s=0, deadline_in_s=900, **head) for _ in range(2))
    seen: dict[str, Any] = {}
    first = granting._candidates(w.ctx, [a, b], seen)
    assert [c.gen_start_at for c in first] == [now - 30, now - 30]
    w.client.hset(KEY_PREFIX + b, "gen_start_at", repr(now - 5))
    second = granting._candidates(w.ctx, [a, b], seen)
    assert second[0] is first[0]  # read the same: not parsed again
    assert second[1].gen_start_at == now - 5
    assert set(seen) == {a, b}
    assert [c.job_id for c in granting._candidates(w.ctx, [b], seen)] == [b]
    assert set(seen) == {b}  # only the ids of the last ranking are kept
