"""Row 3: worker memory per waiting poll with 5,000 pending jobs, on Redis and on RabbitMQ.

One worker per broker, as the Procfile runs it (prefork, 8),
all started together so their waits overlap:

1. warm-up: a few jobs run end to end, so every pool process has its imports and sessions;
2. baseline: garbage collection in the main process, then several RSS samples (main process and
   pool children, psutil), median and spread; Redis ``used_memory``;
3. half of the poll chains are published, for runs that stay pending; each polls once and waits
   ``interval_s`` (far longer than the row) for its next poll;
4. a pause of ``expiry_s``, then the same samples ("middle");
5. the other half, and the same samples once every poll waits ("after").

Why the pause: the prefork pool arms a timer in the main process for the hard time limit of
every task it runs (``tasks/adapters/tts.py``: 120 s for a poll) and a finished task's timer stays
in the heap until it would have fired, about 0.6 KB each. Freed after those 120 s, that memory stays
in the process (the allocator keeps it) and is reused by the next tasks' timers.

* all-in = (after - baseline) / jobs: everything the worker grew by from idle to ``jobs``
  waiting polls, including that high-water mark of recent tasks;
* marginal = (after - middle) / (jobs / 2): what one more waiting poll costs a warm worker, i.e.
  what the waiting polls themselves hold. This is the figure judged against the target.

The spread of the samples, divided by the half, is the noise floor. Where the waiting polls are
is shown beside the figures: held by the worker (Redis ``unacked`` hash; RabbitMQ
unacknowledged), parked in ``tts:wait``, or kept by RabbitMQ (``celery_delayed_*`` queues).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis

from bench import rabbit
from bench.report import Row
from bench.rig import (
    ELEVEN,
    BenchError,
    Caller,
    Rss,
    Stack,
    Worker,
    settled_rss,
    status_calls,
    used_memory,
    wait_for,
)
from tasks import names
from tasks.adapters.tts import API_TIME_LIMIT_S
from tasks.record.jobs import WAIT_KEY
from workers.embedded_redis import EmbeddedRedis
from workers.simulator import Scenario

TITLE = "Worker resident memory per waiting poll, 5,000 pending jobs"
TARGET = "≤ 0.5 KB each, Redis and RabbitMQ"
TARGET_BYTES = 512
POLL_TIMEOUT_S = 7200
KIB = 1024
# Pause between the two readings of where the polls wait that must agree (see Run._placed).
STABLE_READ_S = 0.5


@dataclass(frozen=True)
class Size:
    jobs: int
    interval_s: float  # the wait after the first poll: longer than the row
    samples: int  # RSS samples per median
    settle_s: float  # quiet time before sampling
    expiry_s: float  # pause after the first half: its tasks' time-limit timers expire
    concurrency: int = 8  # the Procfile's
    warm_jobs: int = 16
    sample_pause_s: float = 0.3  # between two RSS samples


SIZES = {
    "full": Size(
        jobs=5000, interval_s=3600, samples=7, settle_s=1.0, expiry_s=API_TIME_LIMIT_S + 5
    ),
    # No pause: the marginal figure then includes the first half's timers.
    "mini": Size(
        jobs=150,
        interval_s=600,
        samples=2,
        settle_s=0.1,
        expiry_s=0.0,
        concurrency=2,
        warm_jobs=4,
        sample_pause_s=0.1,
    ),
}


@dataclass(frozen=True)
class Case:
    label: str
    broker: str  # "redis" or "rabbitmq"


# Every waiting poll is parked in tts:wait on both (issue 21 removed TTS_POLL_WAIT and with it
# the countdown messages: 11.0 KiB per waiting poll on the Redis transport in the last run).
CASES = (
    Case("Redis (parked in `tts:wait`)", "redis"),
    Case("RabbitMQ (parked in `tts:wait`)", "rabbitmq"),
)


@dataclass
class Run:
    """One case: its worker, caller and samples, driven step by step by :func:`run`."""

    case: Case
    stack: Stack
    redis_server: EmbeddedRedis  # this case's own: job state (and broker), memory counted alone
    broker_url: str
    size: Size
    worker: Worker | None = None
    caller: Caller | None = None
    before: Rss | None = None
    middle: Rss | None = None
    after: Rss | None = None
    redis_before: int = 0
    redis_after: int = 0
    broker_before: int = 0
    broker_after: int = 0
    placed: tuple[int, int, int] = (0, 0, 0)  # held by worker, parked, in the broker
    sent: int = 0
    polled_ids: list[str] = field(default_factory=list)

    @property
    def amqp(self) -> bool:
        return self.case.broker == "rabbitmq"

    def start(self) -> None:
        env = self.stack.env(
            self.broker_url,
            TTS_REDIS_URL=self.redis_server.url,
            TTS_POLL_INTERVAL=str(self.size.interval_s),
            TTS_POLL_MAX_INTERVAL=str(self.size.interval_s),
            TTS_POLL_TIMEOUT=str(POLL_TIMEOUT_S),
            TTS_WORKER_CONCURRENCY=str(self.size.concurrency),
            # Budget off: at 20 calls/s the 5,000 first polls alone would take four minutes; a
            # poll without budget waits parked in tts:wait, like the waiting polls measured here.
            TTS_UPSTREAM_RATE="0",
        )
        self.worker = self.stack.worker(env, concurrency=self.size.concurrency)
        self.caller = Caller(self.broker_url)

    def warm_up(self) -> None:
        assert self.caller is not None
        # Poll chains started by name, as the measured ones are: the first poll runs at once
        # (a submit's first poll waits TTS_POLL_INTERVAL, far longer than this row).
        scenario = Scenario(pending_polls=0, queue_position=None)
        run_ids = [
            self.stack.sim.create_run(scenario, model=ELEVEN) for _ in range(self.size.warm_jobs)
        ]
        warm = [f"r3-warm-{rid}" for rid in run_ids]
        url = self.stack.receiver.url
        self.caller.send_many(
            (names.POLL_TTS, [rid, ELEVEN], {"notify_url": url, "job_id": jid})
            for rid, jid in zip(run_ids, warm, strict=True)
        )
        self.stack.tally.wait(warm, timeout_s=60)

    def sample(self) -> Rss:
        assert self.caller is not None
        assert self.worker is not None
        time.sleep(self.size.settle_s)
        return settled_rss(
            self.caller, self.worker, samples=self.size.samples, pause_s=self.size.sample_pause_s
        )

    def baseline(self) -> None:
        self.broker_before = self._broker_memory()
        self.before = self.sample()
        self.redis_before = used_memory(self.state)

    def add_waiting(self, count: int) -> None:
        """Start ``count`` poll chains that stay pending; return once all of them wait."""
        assert self.caller is not None
        scenario = Scenario(pending_polls=10**9, queue_position=None)
        run_ids = [self.stack.sim.create_run(scenario, model=ELEVEN) for _ in range(count)]
        tag = uuid.uuid4().hex[:6]
        self.caller.send_many(
            (names.POLL_TTS, [rid, ELEVEN], {"job_id": f"r3-{tag}-{rid}"}) for rid in run_ids
        )
        wait_for(
            "every job's first poll",
            lambda: len(status_calls(self.stack.sim, run_ids)) == count,
            timeout_s=60 + count / 20,
        )
        self.sent += count
        self.placed = wait_for("waiting polls to settle", self._placed, timeout_s=120)

    def finish(self) -> None:
        self.after = self.sample()
        self.redis_after = used_memory(self.state)
        self.broker_after = self._broker_memory()

    def close(self) -> None:
        if self.caller is not None:
            self.caller.close()
        if self.worker is not None:
            self.worker.process.kill()

    @functools.cached_property
    def state(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def _placed(self) -> tuple[int, int, int] | None:
        """Where the waiting polls are, once two readings half a second apart agree: a poll
        whose status call has been made but whose lease has not moved yet (still unacked, not
        parked) adds up like one held by the worker, for a moment."""
        first = self._placed_now()
        if first is None:
            return None
        time.sleep(STABLE_READ_S)
        return first if self._placed_now() == first else None

    def _placed_now(self) -> tuple[int, int, int] | None:
        state = self.state
        parked = int(state.zcard(WAIT_KEY))
        if self.amqp:
            queues = rabbit.queues(self.broker_url)
            poll_ready = sum(q.ready for q in queues if q.name == names.POLL_QUEUE)
            held = sum(q.unacked for q in queues)
            in_broker = sum(q.ready for q in queues if q.name != names.POLL_QUEUE)
        else:  # the broker is this same Redis
            poll_ready = int(state.llen(names.POLL_QUEUE))
            held = int(state.hlen("unacked"))
            in_broker = 0
        # Exactly: a poll that has parked its successor but not yet been acked counts twice
        # (unacked and parked) for a moment, and must not be read as one held by the worker.
        if poll_ready == 0 and held + parked + in_broker == self.sent:
            return held, parked, in_broker
        return None

    def _broker_memory(self) -> int:
        return sum(q.memory_bytes for q in rabbit.queues(self.broker_url)) if self.amqp else 0

    # The figures, per waiting poll.

    def _delta(self, a: Rss | None, b: Rss | None, field_name: str, jobs: int) -> float:
        assert a is not None
        assert b is not None
        return float(getattr(b, field_name) - getattr(a, field_name)) / jobs

    def all_in(self, field_name: str = "total") -> float:
        return self._delta(self.before, self.after, field_name, self.size.jobs)

    def marginal(self, field_name: str = "total") -> float:
        second = self.size.jobs - self.size.jobs // 2
        return self._delta(self.middle, self.after, field_name, second)

    @property
    def noise(self) -> float:
        samples = [s for s in (self.before, self.middle, self.after) if s is not None]
        return max(s.total_spread for s in samples) / (self.size.jobs - self.size.jobs // 2)

    @property
    def redis_per_job(self) -> float:
        return (self.redis_after - self.redis_before) / self.size.jobs

    @property
    def broker_per_job(self) -> float:
        return (self.broker_after - self.broker_before) / self.size.jobs


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    runs: list[Run] = []
    unavailable: list[str] = []
    with Stack() as stack, contextlib.ExitStack() as resources:
        for case in CASES:
            server = resources.enter_context(EmbeddedRedis())
            url = server.url
            if case.broker == "rabbitmq":
                try:
                    url = resources.enter_context(rabbit.private_vhost())
                except rabbit.Unavailable as exc:
                    unavailable.append(f"{case.label}: not measured ({exc}).")
                    continue
            runs.append(Run(case, stack, server, url, size))
        for r in runs:
            resources.callback(r.close)
        starters = [threading.Thread(target=r.start) for r in runs]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        if any(r.worker is None for r in runs):
            raise BenchError("a worker did not start")
        for r in runs:
            r.warm_up()
            r.baseline()
        half = size.jobs // 2
        for r in runs:
            r.add_waiting(half)
        time.sleep(size.expiry_s)
        for r in runs:
            r.middle = r.sample()
        for r in runs:
            r.add_waiting(size.jobs - half)
            r.finish()
    if not runs:
        raise BenchError("no case measured")
    return _row(runs, size, unavailable)


def _row(runs: list[Run], size: Size, unavailable: list[str]) -> Row:
    table = [
        "| broker | per waiting poll: marginal (main + children) | main process only"
        " | all-in, idle → all waiting | noise (sample spread / half) | held by the worker"
        " | parked in `tts:wait` | waiting in the broker | Redis `used_memory` / job |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        held, parked, in_broker = r.placed
        extra = f" (+ RabbitMQ queues {r.broker_per_job:.0f} B/job)" if r.amqp else ""
        table.append(
            f"| {r.case.label} | **{r.marginal():.0f} B** | {r.marginal('main'):.0f} B |"
            f" {r.all_in():.0f} B | ±{r.noise:.0f} B | {held} | {parked} | {in_broker} |"
            f" {r.redis_per_job:.0f} B{extra} |"
        )
    redis_default = next((r for r in runs if not r.amqp), None)
    amqp = next((r for r in runs if r.amqp), None)
    parts = []
    for label, judged in (("Redis", redis_default), ("RabbitMQ", amqp)):
        if judged is None:
            parts.append(f"{label} not measured")
        else:
            parts.append(f"{label} {_size(judged.marginal())} (all-in {_size(judged.all_in())})")
    details = [
        f"{size.jobs} poll chains on runs that stay pending, each waiting {size.interval_s:g} s"
        f" after its first poll; one worker per case, prefork × {size.concurrency}, all started"
        " together, the NanoGPT budget off (`TTS_UPSTREAM_RATE=0`: the row measures memory; a"
        " poll without budget waits parked in `tts:wait` like the ones measured)."
        " RSS = psutil RSS of the main process + pool children, median of"
        f" {size.samples} samples, each after `gc.collect()` in the main process (`bench_gc`"
        f" control command). Baseline after {size.warm_jobs} warm-up jobs; half the polls; a pause"
        f" of {size.expiry_s:g} s (the prefork pool's per-task time-limit timers, 120 s for a"
        " poll, expire); middle; the other half; after. Each case has a private `redis-server`"
        " for its job state (and its broker on Redis), so `used_memory` counts that case alone.",
        "",
        *table,
        "",
        "Marginal = (after - middle) / half: what waiting polls hold in a warm worker; judged"
        " against the target. All-in = (after - baseline) / all: it also counts the memory"
        " the worker keeps after taking thousands of tasks in a burst (about 0.6 KB per task"
        " run in the last 120 s, for the time-limit timers, then kept by the allocator), which"
        " grows with the task rate, not with the number of waiting jobs.",
        *unavailable,
    ]
    passed = all(j is not None and j.marginal() <= TARGET_BYTES for j in (redis_default, amqp))
    return Row(
        number=3,
        title=TITLE,
        target=TARGET,
        figure=", ".join(parts),
        passed=passed,
        details=details,
        values={
            r.case.broker: {
                "marginal_total_bytes": r.marginal(),
                "marginal_main_bytes": r.marginal("main"),
                "all_in_total_bytes": r.all_in(),
                "noise_bytes": r.noise,
                "redis_per_job_bytes": r.redis_per_job,
                "broker_per_job_bytes": r.broker_per_job,
                "held_by_worker": r.placed[0],
                "parked": r.placed[1],
                "in_broker": r.placed[2],
            }
            for r in runs
        },
    )


def _size(n_bytes: float) -> str:
    return f"{n_bytes:.0f} B" if abs(n_bytes) < 2 * KIB else f"{n_bytes / KIB:.1f} KiB"
