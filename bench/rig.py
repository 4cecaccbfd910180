"""What the rows start and look at: a private Redis, the NanoGPT simulator, a webhook receiver,
real ``celery -A workers.app worker`` processes that also load the baselines, workers of plain
Celery (``bench.plain_app``), and a caller that publishes by task name with the project's own
Celery configuration (as the CLI does) or the plain app's.

Every process listens on loopback only and is stopped by whoever started it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery, chain, signature

from bench import baselines, plain_app
from tasks import names
from tasks.config.celery_config import celery_config
from tasks.config.settings import Settings
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Delivery, Receiver
from workers.simulator import Simulator
from workers.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key-5e2b7c"
SECRET = "whsec_" + base64.b64encode(b"benchmark-webhook-secret-32byte!").decode()
ELEVEN = "Elevenlabs-Turbo-V2.5"
PROJECT_QUEUES = tuple(dict.fromkeys(names.QUEUES.values()))
ALL_QUEUES = (*PROJECT_QUEUES, *baselines.QUEUES)
# The project's production defaults that a row depends on, set explicitly so a variable in the
# caller's shell cannot change a figure; rows override what they vary and print it.
DEFAULT_ENV = {
    "NANOGPT_API_KEY": API_KEY,
    "TTS_WEBHOOK_SECRET": SECRET,
    "TTS_TRUSTED_HOSTS": "127.0.0.1",
    "TTS_TRUSTED_WEBHOOK_HOSTS": "127.0.0.1",
    "TTS_POLL_INTERVAL": "3",
    "TTS_POLL_MAX_INTERVAL": "30",
    "TTS_POLL_TIMEOUT": "900",
    "TTS_WORKER_CONCURRENCY": "8",
    "TTS_LOG_FORMAT": "text",
    "TTS_METRICS_PORT": "",
    "TTS_LIVENESS_FILE": "",
    "CELERY_RESULT_BACKEND": "",
    "TTS_REDIS_URL": "",
    # The worker imports bench.baselines from the checkout, wherever it is started from.
    "PYTHONPATH": str(REPO),
}
# TTS_UPSTREAM_RATE (the fleet-wide budget of NanoGPT calls per second) switched off: rows that
# measure the worker's own overhead against the simulator, which has no limit, set it.
UPSTREAM_BUDGET_OFF = "0"
BUDGET_OFF_NOTE = (
    f"`TTS_UPSTREAM_RATE={UPSTREAM_BUDGET_OFF}` in the project worker's environment (budget off:"
    " rows 2 and 4 measure the worker, not NanoGPT's limit)."
)
# Seconds a control command may take in all, and one attempt waits for the worker's reply.
CONTROL_TIMEOUT_S = 30.0
CONTROL_REPLY_S = 2.0
# How often the rows look at a queue or a counter while they wait: small next to what they time.
LOOK_EVERY_S = 0.01


class BenchError(RuntimeError):
    """A row could not measure what it set out to (a job lost, a worker silent): no figure."""


def wait_for(what: str, predicate: Callable[[], Any], *, timeout_s: float) -> Any:
    """Poll ``predicate`` until it returns something true; BenchError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(LOOK_EVERY_S)


class Tally:
    """The receiver's answer function: answers 200 and notes when each job's webhook came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: dict[str, float] = {}
        self.run_ids: dict[str, str] = {}
        self.types: dict[str, str] = {}  # the first webhook's type: tts.completed or tts.failed

    def __call__(self, delivery: Delivery) -> int:
        body = delivery.json()
        with self._lock:
            self.at.setdefault(body["job_id"], delivery.at)
            self.types.setdefault(body["job_id"], body.get("type", ""))
            if body.get("run_id"):
                self.run_ids[body["job_id"]] = body["run_id"]
        return 200

    def done(self, job_ids: Iterable[str]) -> dict[str, float]:
        """Arrival times of the webhooks of ``job_ids`` that came (epoch seconds)."""
        with self._lock:
            return {j: self.at[j] for j in job_ids if j in self.at}

    def wait(self, job_ids: list[str], *, timeout_s: float) -> dict[str, float]:
        """Wait until every job in ``job_ids`` has its webhook; their arrival times."""
        wanted = set(job_ids)

        def all_in() -> dict[str, float] | None:
            got = self.done(wanted)
            return got if len(got) == len(wanted) else None

        try:
            result: dict[str, float] = wait_for("webhooks", all_in, timeout_s=timeout_s)
        except BenchError:
            missing = len(wanted) - len(self.done(wanted))
            raise BenchError(f"{missing} of {len(wanted)} webhooks never came") from None
        return result


@dataclass
class Stack:
    """A private Redis, the simulator and a receiver; ``scratch`` holds logs and audio."""

    upstream_slots: int = 4
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tts-bench-")))
    redis_server: EmbeddedRedis = field(init=False)
    sim: Simulator = field(init=False)
    tally: Tally = field(init=False)
    receiver: Receiver = field(init=False)
    _stack: contextlib.ExitStack = field(init=False)

    def __enter__(self) -> Stack:
        self._stack = contextlib.ExitStack()
        self.redis_server = self._stack.enter_context(EmbeddedRedis())
        self.sim = self._stack.enter_context(
            Simulator(api_key=API_KEY, upstream_slots=self.upstream_slots)
        )
        self.tally = Tally()
        self.receiver = self._stack.enter_context(Receiver(respond=self.tally))
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis_server.port}/{db}"

    def redis(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), decode_responses=True)

    def env(self, broker_url: str | None = None, **overrides: str) -> dict[str, str]:
        """A worker environment on this stack (broker: the private Redis unless given)."""
        return {
            **DEFAULT_ENV,
            "CELERY_BROKER_URL": broker_url or self.url(),
            "NANOGPT_BASE_URL": self.sim.base_url,
            "TTS_AUDIO_DIR": str(self.scratch / "audio"),
            **overrides,
        }

    def worker(
        self,
        env: dict[str, str],
        *,
        pool: str = "prefork",
        concurrency: int = 8,
        queues: Iterable[str] = ALL_QUEUES,
    ) -> Worker:
        """Start a worker that runs the project's tasks and the baselines; stopped at exit."""
        return self._start(
            "bench",
            env,
            pool=pool,
            concurrency=concurrency,
            queues=",".join(queues),
            extra_argv=("-I", "bench.baselines"),
        )

    def plain_worker(self, db: int, *, pool: str = "prefork", concurrency: int = 8) -> Worker:
        """Start a worker of plain Celery (``bench.plain_app``) on database ``db`` of this Redis.

        Same command line as :meth:`worker` but for the app: none of the project's code or
        variables, and its own database, so its queue, unacked set and pub/sub are its own.
        """
        env = {
            "CELERY_BROKER_URL": self.url(db),
            "CELERY_RESULT_BACKEND": "",  # Celery reads both itself; empty: no result backend
            "PYTHONPATH": str(REPO),
        }
        return self._start("plain", env, pool=pool, concurrency=concurrency, app="bench.plain_app")

    def _start(self, prefix: str, env: dict[str, str], **options: Any) -> Worker:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}@bench"
        proc = WorkerProcess(env, self.scratch / f"{name.split('@')[0]}.log", name=name, **options)
        # Killed, not stopped, at the end: a warm shutdown takes seconds and measures nothing.
        self._stack.callback(proc.kill)
        proc.start()
        return Worker(proc, name)


@dataclass
class Worker:
    """A started worker: its process and its node name (for remote control)."""

    process: WorkerProcess
    name: str

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def tree(self) -> list[psutil.Process]:
        main = psutil.Process(self.pid)
        return [main, *main.children(recursive=True)]

    def rss(self) -> tuple[int, int]:
        """Resident bytes of the main process, and of the main process plus its children."""
        procs = self.tree()
        sizes = [p.memory_info().rss for p in procs]
        return sizes[0], sum(sizes)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the main process and its pool children."""
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        self.process.stop()


class Caller:
    """Publishes by task name, as an app would, with the project's Celery configuration.

    Or with ``config``, another app's (``plain_caller`` gives the plain app's).
    """

    def __init__(self, broker_url: str, config: Mapping[str, Any] | None = None) -> None:
        if config is None:
            settings = Settings(CELERY_BROKER_URL=broker_url)  # type: ignore[call-arg]
            config = celery_config(settings)
        self.app = Celery("bench-caller", set_as_current=False)
        self.app.config_from_object({**config, "broker_url": broker_url})

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send_many(
        self, messages: Iterable[tuple[str, list[Any], dict[str, Any]]], queue: str | None = None
    ) -> int:
        """Publish ``(task name, args, kwargs)`` messages over one connection; how many.

        Each goes to ``queue``, or where the project routes its task name.
        """
        sent = 0
        with self.app.producer_or_acquire() as producer:
            for name, args, kwargs in messages:
                to = queue or names.QUEUES.get(name) or _baseline_queue(name)
                self.app.send_task(name, args=args, kwargs=kwargs, queue=to, producer=producer)
                sent += 1
        return sent

    def send(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.send_many([(name, list(args), kwargs)])

    def noop_chains(
        self,
        count: int,
        length: int = 4,
        *,
        task: str = baselines.NOOP,
        queue: str = baselines.NOOP_QUEUE,
    ) -> None:
        """Publish ``count`` chains of ``length`` no-op tasks (each sends the next when done)."""
        link = signature(task, app=self.app, queue=queue, immutable=True)
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                chain(*(link.clone() for _ in range(length))).apply_async(producer=producer)

    def _control(self, command: str, worker: Worker, **arguments: Any) -> list[dict[str, Any]]:
        """Send a control command and wait for the reply, sending again if none comes.

        On Redis, commands travel by pub/sub: one published before the worker's subscription is
        in place (just after it said "ready") is lost. Every command used here is idempotent.
        """
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while time.monotonic() < deadline:
            replies = self.app.control.broadcast(
                command,
                arguments=arguments,
                destination=[worker.name],
                reply=True,
                timeout=CONTROL_REPLY_S,
            )
            if replies:
                return replies
        raise BenchError(f"worker {worker.name} did not answer {command!r}")

    def pause(self, worker: Worker, queue: str) -> None:
        """Stop ``worker`` taking messages from ``queue`` (those already taken still run)."""
        self._control("cancel_consumer", worker, queue=queue)

    def resume(self, worker: Worker, queue: str) -> None:
        self._control("add_consumer", worker, queue=queue)

    def collect_garbage(self, worker: Worker) -> None:
        self._control("bench_gc", worker)


def _baseline_queue(name: str) -> str:
    return baselines.NOOP_QUEUE if name == baselines.NOOP else baselines.BLOCKING_QUEUE


@contextlib.contextmanager
def caller(broker_url: str) -> Iterator[Caller]:
    with Caller(broker_url) as c:
        yield c


@contextlib.contextmanager
def plain_caller(broker_url: str) -> Iterator[Caller]:
    """A caller with the plain app's configuration, for a worker of ``bench.plain_app``."""
    with Caller(broker_url, plain_app.CONFIG) as c:
        yield c


def drain_rate(
    c: Caller,
    worker: Worker,
    client: redis.Redis,
    queue: str,
    publish: Callable[[], object],
    count: int,
    *,
    what: str,
    timeout_s: float,
) -> float:
    """``count`` items per second of wall time: ``publish()`` puts them in ``queue`` while
    ``worker`` is told not to consume it; the clock runs from telling it to until the queue and
    the unacknowledged set are both empty (``client``: the worker's Redis database).
    """
    c.pause(worker, queue)
    publish()
    started = time.monotonic()
    c.resume(worker, queue)
    wait_for(what, lambda: redis_drained(client, queue), timeout_s=timeout_s)
    return count / (time.monotonic() - started)


def status_calls(sim: Simulator, run_ids: Iterable[str] | None = None) -> Counter[str]:
    """Status requests per run id (all runs, or only ``run_ids``)."""
    wanted = None if run_ids is None else set(run_ids)
    counts: Counter[str] = Counter()
    for r in sim.requests:
        if r.path == "/api/tts/status":
            run_id = r.query.get("runId", "")
            if wanted is None or run_id in wanted:
                counts[run_id] += 1
    return counts


def status_calls_between(sim: Simulator, start: float, end: float) -> int:
    """Status requests that arrived in ``[start, end)`` (epoch seconds)."""
    return sum(1 for r in sim.requests if r.path == "/api/tts/status" and start <= r.at < end)


def redis_drained(client: redis.Redis, queue: str) -> bool:
    """Nothing left in ``queue`` and nothing taken but unacknowledged (Redis transport)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(queue)
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
    return int(waiting) == 0 and int(unacked) == 0


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


@dataclass(frozen=True)
class Rss:
    """Settled resident memory: medians and spreads (max - min) of several samples, bytes."""

    main: float
    total: float
    main_spread: float
    total_spread: float
    samples: int


def settled_rss(c: Caller, worker: Worker, *, samples: int = 7, pause_s: float = 0.3) -> Rss:
    """Garbage-collect the worker's main process, then sample its RSS ``samples`` times."""
    mains: list[int] = []
    totals: list[int] = []
    for _ in range(samples):
        c.collect_garbage(worker)
        time.sleep(pause_s)
        main, total = worker.rss()
        mains.append(main)
        totals.append(total)
    return Rss(
        statistics.median(mains),
        statistics.median(totals),
        max(mains) - min(mains),
        max(totals) - min(totals),
        samples,
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise BenchError("no values to take a percentile of")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def directive(**keys: object) -> str:
    """A simulator directive: ``directive(pending=1, queue='none')`` -> ``[[sim ...]]``."""
    return "[[sim " + " ".join(f"{k}={v}" for k, v in keys.items()) + "]]"


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
