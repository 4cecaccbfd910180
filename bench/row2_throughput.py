"""Row 2: steady-state status polls per second of one worker, vs no-op tasks per second.

For each pool (the Procfile's ``prefork`` with ``TTS_WORKER_CONCURRENCY=8`` first, then threads
and gevent) one worker runs two phases on a fresh Redis database:

* no-ops: a backlog of ``bench.noop`` messages is published while the worker is told not to
  consume their queue, then it is told to; the rate is the backlog over the time to drain it;
* polls: ``jobs`` poll chains whose runs never finish, each re-polled every ``interval_s``, so
  demand (``jobs / interval_s``) is far above what one worker can do; after ``warm_s`` the
  simulator counts the status requests that arrive during ``window_s``.

Polls are measured with the simulator answering at once (loopback: the CPU-bound ceiling the
target is about) and with ``latency`` added to each answer (an internet round trip), where the
number of slots, not the CPU, limits a pool.

The project's no-op already pays for its task events and signal handlers, so plain Celery's
no-op rate is measured beside it for the first pool (the Procfile's): a worker of
``bench.plain_app`` with the same pool and slots drains the same backlog on a database of its
own, just before that pool's first line and just after it. The target is judged on the
project's no-ops as before; polls/s ÷ plain no-ops/s is for the capacity model (no target).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import time
import uuid
from dataclasses import dataclass

import psutil

from bench import baselines, plain
from bench.report import Row
from bench.rig import (
    BUDGET_OFF_NOTE,
    ELEVEN,
    UPSTREAM_BUDGET_OFF,
    BenchError,
    Stack,
    Worker,
    caller,
    drain_rate,
    status_calls_between,
    used_memory,
)
from tasks import names
from tasks.record.jobs import WAIT_KEY
from workers.simulator import Scenario

TITLE = (
    "Steady-state status polls/s of one worker (Procfile: prefork, concurrency 8) ÷ no-op tasks/s"
)
TARGET = "≥ 0.5"
TARGET_RATIO = 0.5
# Long enough for polls in flight (a slot's worth) to finish and re-park, so that clearing the
# keys after it leaves none behind.
SETTLE_S = 1.0
# A poll chain must outlive the run; nothing here is about deadlines.
POLL_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Pool:
    pool: str
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.pool} × {self.concurrency}"


@dataclass(frozen=True)
class Size:
    noops: int
    jobs: int
    interval_s: float
    warm_s: float
    window_s: float
    pools: tuple[Pool, ...]
    latencies_s: tuple[float, ...]


PROCFILE = Pool("prefork", 8)
SIZES = {
    "full": Size(
        noops=6000,
        jobs=2000,
        interval_s=1.0,
        warm_s=4.0,
        window_s=8.0,
        pools=(
            PROCFILE,
            Pool("threads", 8),
            Pool("gevent", 8),
            Pool("threads", 64),
            Pool("gevent", 64),
        ),
        latencies_s=(0.0, 0.15),
    ),
    "mini": Size(
        noops=300,
        jobs=100,
        interval_s=0.5,
        warm_s=0.5,
        window_s=1.5,
        pools=(Pool("prefork", 2), Pool("threads", 4)),
        latencies_s=(0.0,),
    ),
}


@dataclass(frozen=True)
class Phase:
    pool: Pool
    latency_s: float
    noops_s: tuple[float, float] | None  # no-ops/s drained before and after the polls
    polls_per_s: float
    worker_cores: float  # CPU seconds per second used by the worker's processes
    redis_cores: float
    bench_cores: float  # the simulator and receiver (this process)
    backlog: int  # polls due but not yet taken, at the end of the window
    parked: int  # polls waiting in tts:wait at the end of the window
    redis_bytes_per_poll: float  # Redis used_memory growth over the window, per poll

    @property
    def noops_per_s(self) -> float | None:
        """The mean of the two no-op rates: the polls ran between them, so drift cancels."""
        return sum(self.noops_s) / 2 if self.noops_s else None

    @property
    def polls_per_core_s(self) -> float:
        return self.polls_per_s / self.worker_cores if self.worker_cores else 0.0


def noop_rate(stack: Stack, db: int, worker: Worker, count: int) -> float:
    """No-op tasks per second: a backlog of ``count`` drained by ``worker``."""
    with caller(stack.url(db)) as c:
        return drain_rate(
            c,
            worker,
            stack.redis(db),
            baselines.NOOP_QUEUE,
            lambda: c.send_many((baselines.NOOP, [], {}) for _ in range(count)),
            count,
            what="the no-op backlog to drain",
            timeout_s=60 + count / 50,
        )


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    return 0.0


def stop_polls(stack: Stack, db: int, worker: Worker) -> None:
    """End every poll chain: no more polls taken, none parked or queued, none in flight."""
    client = stack.redis(db)
    with caller(stack.url(db)) as c:
        c.pause(worker, names.POLL_QUEUE)
    for _ in range(2):  # polls in flight when the keys go re-park: clear those too
        time.sleep(SETTLE_S)
        client.delete(WAIT_KEY, names.POLL_QUEUE)


def phase(stack: Stack, db: int, pool: Pool, latency_s: float, size: Size, *, noops: bool) -> Phase:
    """One line of the table; with ``noops``, no-op backlogs drained before and after the polls."""
    env = stack.env(
        stack.url(db),
        TTS_POLL_INTERVAL=str(size.interval_s),
        TTS_POLL_MAX_INTERVAL=str(size.interval_s),
        TTS_POLL_TIMEOUT=str(POLL_TIMEOUT_S),
        TTS_WORKER_CONCURRENCY=str(pool.concurrency),
        TTS_UPSTREAM_RATE=UPSTREAM_BUDGET_OFF,
    )
    worker = stack.worker(env, pool=pool.pool, concurrency=pool.concurrency)
    try:
        noops_before = noop_rate(stack, db, worker, size.noops) if noops else None
        scenario = Scenario(pending_polls=10**9, queue_position=None, status_latency_s=latency_s)
        run_ids = [stack.sim.create_run(scenario, model=ELEVEN) for _ in range(size.jobs)]
        with caller(stack.url(db)) as c:
            tag = uuid.uuid4().hex[:6]
            c.send_many(
                (names.POLL_TTS, [rid, ELEVEN], {"job_id": f"r2-{tag}-{rid}"}) for rid in run_ids
            )
        time.sleep(size.warm_s)
        redis_pid = stack.redis_server.process.pid if stack.redis_server.process else None
        client = stack.redis(db)
        memory_before = used_memory(client)
        started = time.time()
        before = (worker.cpu_s(), cpu_s(redis_pid), cpu_s(psutil.Process().pid))
        time.sleep(size.window_s)
        ended = time.time()
        after = (worker.cpu_s(), cpu_s(redis_pid), cpu_s(psutil.Process().pid))
        memory_after = used_memory(client)
        backlog = int(client.llen(names.POLL_QUEUE))
        parked = int(client.zcard(WAIT_KEY))
        noops_after = None
        if noops:
            stop_polls(stack, db, worker)
            noops_after = noop_rate(stack, db, worker, size.noops)
    finally:
        worker.process.kill()
    elapsed_s = ended - started
    polls = status_calls_between(stack.sim, started, ended)
    if polls == 0:
        raise BenchError(f"{pool.label}: no status request in {elapsed_s:.1f}s")
    worker_cores, redis_cores, bench_cores = (
        (a - b) / elapsed_s for a, b in zip(after, before, strict=True)
    )
    return Phase(
        pool,
        latency_s,
        (noops_before, noops_after) if noops_before and noops_after else None,
        polls / elapsed_s,
        worker_cores,
        redis_cores,
        bench_cores,
        backlog,
        parked,
        (memory_after - memory_before) / polls,
    )


def available(pool: Pool) -> bool:
    return pool.pool != "gevent" or importlib.util.find_spec("gevent") is not None


def plain_noops(stack: Stack, db: int, pool: Pool, size: Size) -> float:
    """Plain Celery's no-op rate on ``pool``, drained as :func:`noop_rate` drains ours."""
    return plain.noops_per_s(stack, db, size.noops, pool=pool.pool, concurrency=pool.concurrency)


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    phases: list[Phase] = []
    pools = [p for p in size.pools if available(p)]
    skipped = [p.label for p in size.pools if not available(p)]
    # (pool, upstream answer, whether its no-ops are drained): each pool's first line drains them.
    lines = [(p, lat, n == 0) for p in pools for n, lat in enumerate(size.latencies_s)]
    (head_pool, head_latency_s, _), *other_lines = lines
    dbs = itertools.count(1)  # a fresh Redis database for every worker
    with Stack() as stack:
        plain_before = plain_noops(stack, next(dbs), head_pool, size)
        phases.append(phase(stack, next(dbs), head_pool, head_latency_s, size, noops=True))
        plain_after = plain_noops(stack, next(dbs), head_pool, size)
        for pool, latency_s, noops in other_lines:
            phases.append(phase(stack, next(dbs), pool, latency_s, size, noops=noops))
    head = phases[0]  # the Procfile's pool at zero latency
    assert head.noops_per_s is not None
    ratio = head.polls_per_s / head.noops_per_s
    # Plain Celery around the head line, before and after, as the project's no-ops are.
    plain_rate = (plain_before + plain_after) / 2
    plain_ratio = head.polls_per_s / plain_rate
    # Each pool's no-op rates were measured on its first line (zero latency).
    noop_line = {p.pool: p for p in phases if p.noops_s is not None}
    table = [
        "| pool × slots | upstream answer | polls/s | no-ops/s (same worker: before / after)"
        f" | polls ÷ no-ops | polls ÷ plain Celery no-ops ({head.pool.label})"
        " | worker CPU (cores) | polls per worker CPU-second | redis-server CPU | simulator +"
        " receiver CPU | due polls queued at end | Redis memory growth per poll |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        noop_phase = noop_line[p.pool]
        assert noop_phase.noops_per_s is not None
        assert noop_phase.noops_s is not None
        noop = noop_phase.noops_per_s
        first, last = noop_phase.noops_s
        table.append(
            f"| {p.pool.label} | {p.latency_s * 1000:.0f} ms | {p.polls_per_s:.0f} |"
            f" {noop:.0f} ({first:.0f} / {last:.0f}) | {p.polls_per_s / noop:.2f} |"
            f" {_plain_cell(p, head.pool, plain_rate)} | {p.worker_cores:.2f} |"
            f" {p.polls_per_core_s:.0f} | {p.redis_cores:.2f} | {p.bench_cores:.2f} | {p.backlog} |"
            f" {p.redis_bytes_per_poll:.0f} B |"
        )
    winners = []
    for latency_s in size.latencies_s:
        at = [p for p in phases if p.latency_s == latency_s]
        best = max(at, key=lambda p: p.polls_per_s)
        winners.append(
            f"{latency_s * 1000:.0f} ms: **{best.pool.label}** ({best.polls_per_s:.0f}/s)"
        )
    details = [
        f"{size.jobs} poll chains whose runs never finish, `TTS_POLL_INTERVAL ="
        f" TTS_POLL_MAX_INTERVAL = {size.interval_s:g}` (demand {size.jobs / size.interval_s:.0f}"
        f" polls/s), waiting polls parked in `tts:wait`, window"
        f" {size.window_s:g} s after {size.warm_s:g} s of warm-up; no-ops: a backlog of"
        f" {size.noops} drained by the same worker before its polls start, and another after they"
        " stop (their mean is the rate: drift of the shared machine between the phases cancels)."
        " A fresh worker and Redis database per line; the simulator (HTTP/1.1 keep-alive, as"
        " NanoGPT's front end) and receiver share the 2 cores with the worker. " + BUDGET_OFF_NOTE,
        "",
        f"Plain Celery beside it (no target; for the capacity model): a worker of"
        f" `bench/plain_app.py` (no project code: no task events, no signal handlers; acks late,"
        f" as ours), {head.pool.label}, drained the same backlog of {size.noops} no-ops on a"
        " database of its own, with no worker of ours running, just before the"
        f" {head.pool.label} line and just after it: **{plain_rate:.0f} no-ops/s**"
        f" ({plain_before:.0f} / {plain_after:.0f}),"
        f" so polls/s ÷ plain no-ops/s = {head.polls_per_s:.0f} ÷ {plain_rate:.0f} ="
        f" **{plain_ratio:.2f}**; the project's own no-op runs at"
        f" {head.noops_per_s / plain_rate:.2f} of plain Celery's"
        f" ({head.noops_per_s:.0f} ÷ {plain_rate:.0f}). Measured for {head.pool.label} only:"
        " the other lines show “–”.",
        "",
        *table,
        "",
        "Winner by polls/s at each upstream answer time: " + "; ".join(winners) + ".",
        "",
        "Redis memory growth per poll: the job records keep one delivery counter each (in the job's"
        " own hash since this row found a key per task execution kept for 24 h); what is left is"
        " noise and the broker's own structures.",
    ]
    if skipped:
        details.append(f"Not measured (gevent not installed): {', '.join(skipped)}.")
    if head.backlog == 0:
        details.append("Warning: no backlog at the end: demand may not have exceeded capacity.")
    return Row(
        number=2,
        title=TITLE,
        target=TARGET,
        figure=(
            f"{ratio:.2f} ({head.polls_per_s:.0f} polls/s vs {head.noops_per_s:.0f} no-ops/s,"
            f" {head.pool.label}); vs plain Celery's no-ops {plain_ratio:.2f}"
            f" ({plain_rate:.0f}/s, no target)"
        ),
        passed=ratio >= TARGET_RATIO,
        details=details,
        values={
            "ratio": ratio,
            "plain_noops_per_s": plain_rate,
            "plain_noops_per_s_before": plain_before,
            "plain_noops_per_s_after": plain_after,
            "plain_pool": head.pool.pool,
            "plain_concurrency": head.pool.concurrency,
            "plain_ratio": plain_ratio,
            "noops_vs_plain": head.noops_per_s / plain_rate,
            "upstream_rate": UPSTREAM_BUDGET_OFF,
            "phases": [
                {
                    "pool": p.pool.pool,
                    "concurrency": p.pool.concurrency,
                    "latency_s": p.latency_s,
                    "polls_per_s": p.polls_per_s,
                    "noops_per_s": noop_line[p.pool].noops_per_s,
                    "worker_cores": p.worker_cores,
                    "polls_per_core_s": p.polls_per_core_s,
                    "redis_cores": p.redis_cores,
                    "backlog": p.backlog,
                    "parked": p.parked,
                    "redis_bytes_per_poll": p.redis_bytes_per_poll,
                }
                for p in phases
            ],
        },
    )


def _plain_cell(p: Phase, measured: Pool, plain_rate: float) -> str:
    """Polls ÷ plain no-ops for the pool plain Celery was measured on; a dash for the others."""
    return f"{p.polls_per_s / plain_rate:.2f}" if p.pool == measured else "–"
