"""Row 3: worker memory per waiting poll with 5,000 pending jobs, on Redis and on RabbitMQ.

For each broker and ``TTS_POLL_WAIT`` mode, one worker as the Procfile runs it (prefork, 8):

1. warm-up: a few jobs run end to end, so every pool process has its imports and sessions;
2. baseline: garbage collection in the main process, then several RSS samples (main process and
   pool children, psutil), median and spread; Redis ``used_memory``;
3. ``jobs`` poll chains are published for runs that stay pending; each polls once and waits
   ``interval_s`` (far longer than the measurement) for its next poll;
4. once every one has polled and nothing is left in the poll queue, the same samples again.

Per waiting poll = (after - before) / jobs. The spread of the samples, divided the same way, is
the noise floor. Where the waiting polls are is shown beside the figure: held by the worker
(Redis ``unacked`` hash; RabbitMQ unacknowledged), parked in ``tts:wait``, or kept by RabbitMQ.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from bench import rabbit
from bench.report import Row
from bench.rig import (
    ELEVEN,
    BenchError,
    Rss,
    Stack,
    caller,
    directive,
    settled_rss,
    status_calls,
    used_memory,
    wait_for,
)
from tasks import names
from tasks.jobs import WAIT_KEY
from workers.simulator import Scenario

TITLE = "Worker resident memory per waiting poll, 5,000 pending jobs"
TARGET = "≤ 0.5 KB each, Redis and RabbitMQ"
TARGET_BYTES = 512
CONCURRENCY = 8  # the Procfile's
WARM_JOBS = 16
POLL_TIMEOUT_S = 7200
KIB = 1024


@dataclass(frozen=True)
class Size:
    jobs: int
    interval_s: float  # the wait after the first poll: longer than the measurement
    samples: int  # RSS samples per median
    settle_s: float  # quiet time before sampling


SIZES = {
    "full": Size(jobs=5000, interval_s=1800, samples=7, settle_s=1.0),
    "mini": Size(jobs=150, interval_s=600, samples=3, settle_s=0.2),
}


@dataclass(frozen=True)
class Case:
    label: str
    broker: str  # "redis" or "rabbitmq"
    poll_wait: str  # TTS_POLL_WAIT


CASES = (
    Case("Redis, `TTS_POLL_WAIT=broker` (countdown messages)", "redis", "broker"),
    Case("Redis, `TTS_POLL_WAIT=redis` (parked in `tts:wait`; the default)", "redis", "redis"),
    Case("RabbitMQ, `TTS_POLL_WAIT=auto` (countdown messages; the default)", "rabbitmq", "auto"),
)


@dataclass(frozen=True)
class Measured:
    case: Case
    jobs: int
    before: Rss
    after: Rss
    redis_before: int
    redis_after: int
    held_by_worker: int
    parked: int
    in_broker: int
    broker_memory: int | None  # RabbitMQ: bytes the vhost's queues grew by

    def per_job(self, field: str) -> float:
        return float(getattr(self.after, field) - getattr(self.before, field)) / self.jobs

    @property
    def noise(self) -> float:
        return max(self.before.total_spread, self.after.total_spread) / self.jobs

    @property
    def redis_per_job(self) -> float:
        return (self.redis_after - self.redis_before) / self.jobs


def measure(stack: Stack, case: Case, size: Size, broker_url: str, db: int) -> Measured:
    env = stack.env(
        broker_url,
        TTS_REDIS_URL=stack.url(db),
        TTS_POLL_WAIT=case.poll_wait,
        TTS_POLL_INTERVAL=str(size.interval_s),
        TTS_POLL_MAX_INTERVAL=str(size.interval_s),
        TTS_POLL_TIMEOUT=str(POLL_TIMEOUT_S),
        TTS_WORKER_CONCURRENCY=str(CONCURRENCY),
    )
    worker = stack.worker(env, concurrency=CONCURRENCY)
    state = stack.redis(db)
    amqp = case.broker == "rabbitmq"
    with caller(broker_url) as c:
        warm = [f"r3-warm-{uuid.uuid4().hex[:10]}" for _ in range(WARM_JOBS)]
        text = f"warm-up {directive(pending=0, queue='none')}"
        c.send_many(
            (names.SUBMIT_TTS, [text, ELEVEN], {"notify_url": stack.receiver.url, "job_id": j})
            for j in warm
        )
        stack.tally.wait(warm, timeout_s=60)
        time.sleep(size.settle_s)
        broker_before = _broker_memory(broker_url) if amqp else None
        before = settled_rss(c, worker, samples=size.samples)
        redis_before = used_memory(state)

        scenario = Scenario(pending_polls=10**9, queue_position=None)
        run_ids = [stack.sim.create_run(scenario, model=ELEVEN) for _ in range(size.jobs)]
        tag = uuid.uuid4().hex[:6]
        c.send_many(
            (names.POLL_TTS, [rid, ELEVEN], {"job_id": f"r3-{tag}-{rid}"}) for rid in run_ids
        )
        wait_for(
            "every job's first poll",
            lambda: len(status_calls(stack.sim, run_ids)) == size.jobs,
            timeout_s=60 + size.jobs / 20,
        )
        waiting = _settle(stack, db, broker_url, amqp, size.jobs)
        time.sleep(size.settle_s)
        after = settled_rss(c, worker, samples=size.samples)
        redis_after = used_memory(state)
        broker_after = _broker_memory(broker_url) if amqp else None
    worker.process.kill()
    return Measured(
        case,
        size.jobs,
        before,
        after,
        redis_before,
        redis_after,
        *waiting,
        None if broker_after is None or broker_before is None else broker_after - broker_before,
    )


def _settle(
    stack: Stack, db: int, broker_url: str, amqp: bool, expected: int
) -> tuple[int, int, int]:
    """Wait until every waiting poll is where it waits; (held by worker, parked, in broker)."""
    state = stack.redis(db)

    def placed() -> tuple[int, int, int] | None:
        parked = int(state.zcard(WAIT_KEY))
        if amqp:
            queues = rabbit.queues(broker_url)
            poll_ready = sum(q.ready for q in queues if q.name == names.POLL_QUEUE)
            held = sum(q.unacked for q in queues)
            in_broker = sum(q.ready for q in queues if q.name != names.POLL_QUEUE)
        else:  # the broker is this same Redis database
            poll_ready = int(state.llen(names.POLL_QUEUE))
            held = int(state.hlen("unacked"))
            in_broker = 0
        if poll_ready == 0 and held + parked + in_broker >= expected:
            return held, parked, in_broker
        return None

    result: tuple[int, int, int] = wait_for("waiting polls to settle", placed, timeout_s=120)
    return result


def _broker_memory(broker_url: str) -> int:
    return sum(q.memory_bytes for q in rabbit.queues(broker_url))


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    results: list[Measured] = []
    unavailable: list[str] = []
    with Stack() as stack:
        for db, case in enumerate(CASES, start=1):
            if case.broker == "redis":
                results.append(measure(stack, case, size, stack.url(db), db))
                continue
            try:
                with rabbit.private_vhost() as url:
                    results.append(measure(stack, case, size, url, db))
            except rabbit.Unavailable as exc:
                unavailable.append(f"{case.label}: not measured ({exc})")
    if not results:
        raise BenchError("no case measured")
    table = [
        "| broker, mode | worker RSS / waiting poll (main + children) | main process only |"
        " noise (sample spread / jobs) | held by the worker | parked in `tts:wait` |"
        " waiting in the broker | Redis `used_memory` / job |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        broker_mem = (
            f" (+ RabbitMQ queues {m.broker_memory / m.jobs:.0f} B/job)"
            if m.broker_memory is not None
            else ""
        )
        table.append(
            f"| {m.case.label} | {m.per_job('total'):.0f} B | {m.per_job('main'):.0f} B |"
            f" ±{m.noise:.0f} B | {m.held_by_worker} | {m.parked} | {m.in_broker} |"
            f" {m.redis_per_job:.0f} B{broker_mem} |"
        )
    redis_default = next((m for m in results if m.case.poll_wait == "redis"), None)
    amqp = next((m for m in results if m.case.broker == "rabbitmq"), None)
    parts = []
    if redis_default:
        parts.append(f"Redis {redis_default.per_job('total'):.0f} B")
    if amqp:
        parts.append(f"RabbitMQ {amqp.per_job('total') / KIB:.1f} KiB")
    else:
        parts.append("RabbitMQ not measured")
    broker_mode = next((m for m in results if m.case.poll_wait == "broker"), None)
    if broker_mode:
        parts.append(f"(Redis with countdowns: {broker_mode.per_job('total') / KIB:.1f} KiB)")
    details = [
        f"{size.jobs} poll chains on runs that stay pending, each waiting {size.interval_s:g} s"
        f" after its first poll; one worker, prefork × {CONCURRENCY}; RSS = psutil RSS of the"
        f" main process + pool children, median of {size.samples} samples, each after"
        " `gc.collect()` in the main process (`bench_gc` control command); before = after "
        f"{WARM_JOBS} warm-up jobs, after = once every poll waits. Job state in the private"
        " Redis in every case.",
        "",
        *table,
        "",
        *unavailable,
        "The target needs both brokers; the RabbitMQ line measures whatever"
        " `workers/celery_config.py` does on `amqp://` at the time of the run (quorum queues"
        " with native delayed delivery keep countdown messages in RabbitMQ's delay exchanges"
        " and out of the worker).",
    ]
    # Judged on the defaults of both brokers; the countdown mode on Redis is shown for contrast.
    passed = all(
        m is not None and m.per_job("total") <= TARGET_BYTES for m in (redis_default, amqp)
    )
    return Row(
        number=3,
        title=TITLE,
        target=TARGET,
        figure=", ".join(parts),
        passed=passed,
        details=details,
        values={
            m.case.broker + ":" + m.case.poll_wait: {
                "per_job_total_bytes": m.per_job("total"),
                "per_job_main_bytes": m.per_job("main"),
                "noise_bytes": m.noise,
                "redis_per_job_bytes": m.redis_per_job,
                "held_by_worker": m.held_by_worker,
                "parked": m.parked,
                "in_broker": m.in_broker,
            }
            for m in results
        },
    )
