"""A fault-injection rig: private Redis (AOF on), simulator, webhook receiver, worker processes.

Each test gets its own rig, injects one fault, and reports figures through :class:`Figures`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from tasks.config.celery_config import AMQP_EXCHANGE
from tasks.names import QUEUES
from tasks.record.jobs import Job, JobStore
from tests.support.worker import WorkerProcess
from workers.embedded_redis import EmbeddedRedis, free_port
from workers.receiver import Delivery, Receiver
from workers.simulator import Simulator

# Where NanoGPT's submit endpoint sits on the simulator (NANOGPT_BASE_URL is its root + "/api").
SUBMIT_PATH = "/api/tts"
# kombu's Redis transport keeps every message a worker has taken but not acked in this hash.
UNACKED_KEY = "unacked"

API_KEY = "rel-key-5f2b8c"
SECRET = "whsec_" + base64.b64encode(b"reliability-suite-secret-32bytes").decode()
MODEL = "Elevenlabs-Turbo-V2.5"

# Production defaults except: shorter waits so the suite runs in minutes, and a short recovery
# grace so a lost step is re-sent within seconds (production: 30 s).
RIG_ENV = {
    "NANOGPT_API_KEY": API_KEY,
    "TTS_WEBHOOK_SECRET": SECRET,
    "TTS_TRUSTED_HOSTS": "127.0.0.1",
    "TTS_TRUSTED_WEBHOOK_HOSTS": "127.0.0.1",
    "TTS_POLL_INTERVAL": "1",
    "TTS_POLL_MAX_INTERVAL": "3",
    "TTS_POLL_TIMEOUT": "600",
    # The NanoGPT budget is on and binds (200 jobs polling every second ask for 200 calls/s), so
    # faults strike while calls wait, are granted and are deferred; at 100/s every job still
    # reaches the state a fault must find it in (all 200 submitted within a job's 8 s pending).
    "TTS_UPSTREAM_RATE": "100",
    "TTS_UPSTREAM_BURST": "20",
    "TTS_RETRY_BASE_DELAY": "1",
    "TTS_RETRY_MAX_DELAY": "10",
    "TTS_MAX_RETRIES": "8",
    "TTS_HTTP_CONNECT_TIMEOUT": "1",
    "TTS_HTTP_READ_TIMEOUT": "2",
    "TTS_DOWNLOAD_TIMEOUT": "2",
    "TTS_RECOVERY_GRACE": "5",
    "TTS_RECONCILE_INTERVAL": "1",
    "TTS_WEBHOOK_RETRY_DELAY": "2",
    "TTS_WEBHOOK_MAX_RETRY_DELAY": "30",
}


@dataclass
class Figures:
    """One row of RELIABILITY.md."""

    fault: str
    jobs: int
    lost: int = 0
    duplicated: int = 0
    repeats: int = 0
    recovery_s: float | None = None
    note: str = ""


@dataclass
class Tally:
    """What the receiver saw for a set of jobs."""

    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # two different outcomes accepted
    repeats: int = 0  # the same outcome accepted again (same webhook-id)
    last_at: float = 0.0
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Where :meth:`Rig.outcome_ids_by_text` counts outcomes of job ids no caller's message names.
NOBODY_SENT = "<job id nobody sent>"


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "redis").mkdir()
        self.redis = EmbeddedRedis(appendonly=True, data_dir=tmp / "redis").start()
        self.sim = Simulator(api_key=API_KEY).start()
        self.receiver_port = free_port()
        self.respond_status = 200
        self.receiver: Receiver | None = None
        self.start_receiver()
        self.workers: list[WorkerProcess] = []
        # Where the workers and the caller find the broker: the rig's Redis unless a test moves
        # it (:meth:`use_broker`); what else the workers see differently (:meth:`split_job_store`).
        self.broker_url = self.redis.url
        self.overrides: dict[str, str] = {}
        self.job_redis: EmbeddedRedis | None = None
        self.caller = Celery("rel-caller", broker=self.redis.url)
        self.store = JobStore(
            redis.Redis.from_url(self.redis.url, decode_responses=True), ttl_s=3600
        )
        self.audio_dir = tmp / "audio"
        self._deliveries: list[Delivery] = []
        self._retired: set[WorkerProcess] = set()
        self.restarts = 0
        # Why a restart by the supervisor failed (the worker exited while starting, or was not
        # ready in time); it is tried again on its next tick.
        self.failed_starts: list[str] = []

    # --- processes -------------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            **RIG_ENV,
            "CELERY_BROKER_URL": self.broker_url,
            "NANOGPT_BASE_URL": self.sim.base_url,
            "TTS_AUDIO_DIR": str(self.audio_dir),
            **self.overrides,
            **overrides,
        }

    def use_broker(self, url: str) -> None:
        """Send through another broker (RabbitMQ): before any worker starts. The caller declares
        our queues as the README's RabbitMQ section says (quorum, on the ``tts`` topic exchange),
        as the worker does, so a second declaration never differs."""
        assert not self.workers, "choose the broker before starting workers"
        self.broker_url = url
        self.caller.close()
        self.caller = Celery("rel-caller", broker=url)
        self.caller.conf.task_serializer = "json"
        if url.startswith("amqp"):
            tts = Exchange(AMQP_EXCHANGE, type="topic")
            quorum = {"x-queue-type": "quorum"}
            self.caller.conf.task_queues = [
                Queue(q, tts, routing_key=q, queue_arguments=quorum)
                for q in sorted(set(QUEUES.values()))
            ]

    def split_job_store(self) -> EmbeddedRedis:
        """Keep job state in a redis-server of its own (``TTS_REDIS_URL``), apart from the
        broker, as the README's split set-up does: AOF everysec, ``noeviction``. Its faults
        (:func:`store_down`, :func:`store_full`, :func:`store_frozen`) leave the broker alive."""
        assert not self.workers, "split the job store before starting workers"
        (self.tmp / "store").mkdir()
        self.job_redis = EmbeddedRedis(appendonly=True, data_dir=self.tmp / "store").start()
        _no_eviction(self.job_redis)
        self.store = JobStore(
            redis.Redis.from_url(self.job_redis.url, decode_responses=True), ttl_s=3600
        )
        self.overrides["TTS_REDIS_URL"] = self.job_redis.url
        return self.job_redis

    def start_worker(self, *, concurrency: int = 8, **overrides: str) -> WorkerProcess:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.env(**overrides), log, concurrency=concurrency).start()
        self.workers.append(worker)
        return worker

    def supervise(self) -> threading.Event:
        """Restart any worker that exits on its own, as systemd or Kubernetes would.

        Needed for broker loss: with kombu 5.7's Redis transport a worker that loses the broker
        while holding unacked messages exits ("Unrecoverable error" restoring them).
        """
        stop = threading.Event()
        owed = 0  # workers that exited and are not yet running again

        def loop() -> None:
            nonlocal owed
            while not stop.wait(0.5):
                for worker in list(self.workers):
                    if (
                        worker.process is not None
                        and worker.process.poll() is not None
                        and worker not in self._retired
                    ):
                        self._retired.add(worker)
                        owed += 1
                while owed and not stop.is_set():
                    self.restarts += 1
                    try:
                        self.start_worker()
                    except RuntimeError as exc:
                        # It exited while starting (the broker still down or full) or was not
                        # ready in time: a supervisor tries again, as systemd's Restart= does.
                        self.failed_starts.append(str(exc)[-2000:])
                        break
                    owed -= 1

        threading.Thread(target=loop, daemon=True).start()
        return stop

    def start_receiver(self) -> None:
        self.receiver = Receiver(
            secret=SECRET, port=self.receiver_port, respond=lambda _d: self.respond_status
        ).start()

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self._deliveries += self.receiver.deliveries
            self.receiver.stop()
            self.receiver = None

    @property
    def notify_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}/hook"

    def deliveries(self) -> list[Delivery]:
        return self._deliveries + (self.receiver.deliveries if self.receiver else [])

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.stop_receiver()
        self.sim.stop()
        self.caller.close()
        if self.job_redis is not None:
            _resume(self.job_redis)  # a test that failed mid-SIGSTOP
            self.job_redis.stop()
        self.redis.stop()

    # --- jobs --------------------------------------------------------------------------------

    def submit(self, n: int, directive: str, *, prefix: str = "rel") -> list[str]:
        ids = []
        for i in range(n):
            jid = f"{prefix}-{i}-{uuid.uuid4().hex[:8]}"
            self.caller.send_task(
                "tts.submit_tts",
                args=[f"Job {i} [[sim {directive}]]", MODEL],
                kwargs={"notify_url": self.notify_url, "job_id": jid},
                queue=QUEUES["tts.submit_tts"],
            )
            ids.append(jid)
        return ids

    def send_by_name(self, n: int, directive: str, *, prefix: str = "Job") -> dict[str, str]:
        """Send ``n`` submits as another app would: by name, with no ``job_id``.

        Such a caller knows its job only by the task id ``send_task`` returns, so that is the id
        the jobs are tracked (and tallied) by. Returns {task id: text}; every text is distinct.
        """
        sent = {}
        for i in range(n):
            text = f"{prefix} {i} [[sim {directive}]]"
            result = self.caller.send_task(
                "tts.submit_tts",
                args=[text, MODEL],
                kwargs={"notify_url": self.notify_url},
                queue=QUEUES["tts.submit_tts"],
            )
            sent[result.id] = text
        return sent

    def posts(self, *, since: float = 0.0, before: float = float("inf")) -> Counter[str]:
        """POST /api/tts requests the simulator received per text, arrived in [since, before).

        The simulator records a request when it arrives, before it answers: a POST whose caller
        died waiting for the answer counts too.
        """
        return Counter(
            r.body["text"]
            for r in self.sim.requests
            if r.method == "POST"
            and r.path == SUBMIT_PATH
            and r.body is not None
            and since <= r.at < before
        )

    def outcome_ids_by_text(self, sent: dict[str, str]) -> dict[str, set[str]]:
        """The job ids with an accepted webhook, per submitted text; ``sent``: each message's
        task id and text (a caller who leaves the job id out gets the task id as job id).

        Independent of which id the worker chose for a job: two job ids under one text are two
        outcomes for what the caller sent once. A job id nobody sent is read from its record
        while the record still has the text (it is dropped once NanoGPT accepted the POST, issue
        19), and otherwise counted under ``<job id nobody sent>``: an outcome for no message.
        """
        by_text: dict[str, set[str]] = defaultdict(set)
        for delivery in self.deliveries():
            if delivery.answered != 200:
                continue
            jid = delivery.json()["job_id"]
            text = sent.get(jid)
            if text is None:
                job = self.store.get(jid)
                text = job.request["text"] if job is not None and job.request else NOBODY_SENT
            by_text[text].add(jid)
        return dict(by_text)

    def take_and_abandon(self, queue: str, n: int) -> set[str]:
        """Take ``n`` messages from ``queue`` as a worker's consumer does (kombu writes its
        ``unacked`` entry) and drop them unrecorded, as a worker SIGKILLed in between would;
        their task ids. Nothing is given back: they stay in ``unacked`` for the visibility
        timeout."""
        taken = set()
        with Connection(self.broker_url) as conn:
            channel = conn.default_channel
            for _ in range(n):
                message = channel.basic_get(queue, no_ack=False)
                assert message is not None, f"{queue} had fewer than {n} messages"
                taken.add(message.headers["id"])
            channel.qos.restore_at_shutdown = False
        return taken

    def unacked(self, task_name: str) -> set[str]:
        """Task ids of ``task_name`` messages taken by a worker and not acked (prefetched or
        running), read from the broker's own bookkeeping."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            raw = client.hvals(UNACKED_KEY)
        finally:
            client.close()
        ids = set()
        for value in raw:
            headers = json.loads(value)[0]["headers"]
            if headers.get("task") == task_name:
                ids.add(headers["id"])
        return ids

    def queued(self, queue: str) -> set[str]:
        """Task ids of the messages waiting in ``queue`` (each of kombu's priority lists)."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            raw = [m for key in client.keys(f"{queue}*") for m in client.lrange(key, 0, -1)]
        finally:
            client.close()
        return {json.loads(m)["headers"]["id"] for m in raw}

    def received(self, task_name: str) -> set[str]:
        """Task ids of ``task_name`` messages any worker of the rig logged as received. Celery
        logs that right after kombu's unacked write, on stderr (line-buffered), so a SIGKILLed
        worker's log has every message it had taken into unacked."""
        pattern = re.compile(rf"Task {re.escape(task_name)}\[([0-9a-f-]+)\] received")
        return {
            found
            for worker in self.workers
            for found in pattern.findall(worker.log_path.read_text(errors="replace"))
        }

    def jobs(self, ids: list[str]) -> dict[str, Job | None]:
        return {jid: self.store.get(jid) for jid in ids}

    def wait_status(self, ids: list[str], statuses: set[str], *, timeout_s: float) -> None:
        """Until every job's status is in ``statuses`` (e.g. all polling before a fault)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            jobs = self.jobs(ids)
            if all(j is not None and j.status in statuses for j in jobs.values()):
                return
            time.sleep(0.2)
        raise TimeoutError(f"jobs did not reach {statuses} in {timeout_s}s")

    def tally(self, ids: list[str], *, timeout_s: float) -> Tally:
        """Wait until every job has an accepted webhook (or time runs out), then count."""
        deadline = time.monotonic() + timeout_s
        wanted = set(ids)
        while time.monotonic() < deadline:
            accepted = {d.json()["job_id"] for d in self.deliveries() if d.answered == 200}
            if wanted <= accepted:
                break
            time.sleep(0.25)
        time.sleep(1.0)  # let any duplicate that was about to land, land
        per_job: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in self.deliveries():
            if delivery.answered == 200:
                per_job[delivery.json()["job_id"]].append(delivery)
        tally = Tally()
        for jid in ids:
            got = per_job.get(jid, [])
            if not got:
                tally.lost.append(jid)
                continue
            distinct = {d.body for d in got}
            if len(distinct) > 1:
                tally.duplicated.append(jid)
            tally.repeats += len(got) - 1
            tally.last_at = max(tally.last_at, max(d.at for d in got))
            tally.bodies[jid] = got[0].json()
            assert all(d.verified for d in got)
        return tally

    def kill_children(self, worker: WorkerProcess) -> list[int]:
        """SIGKILL the worker's pool processes (not the main process); returns their pids."""
        assert worker.process is not None
        kids = children(worker.process.pid)
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
        return kids


# --- faults of the job store alone (the broker lives) ----------------------------------------


# What store_full writes to find the job store's limit.
PROBE_KEY = "tts:rig:probe"


def _no_eviction(server: EmbeddedRedis) -> None:
    """Redis' own advice for data that must not vanish: refuse writes when full, evict nothing."""
    client = redis.Redis(port=server.port)
    try:
        client.config_set("maxmemory-policy", "noeviction")
    finally:
        client.close()


def _resume(server: EmbeddedRedis) -> None:
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)


def store_down(server: EmbeddedRedis, down_s: float) -> str:
    """SIGKILL the job store (no shutdown save: it loses what ``everysec`` had not synced) and
    start it again on its files (AOF) ``down_s`` later. Returns what it did, for the table."""
    server.kill()
    time.sleep(down_s)
    server.start()
    _no_eviction(server)
    return f"SIGKILLed, restarted on its AOF {down_s:.0f} s later"


def store_full(server: EmbeddedRedis, full_s: float) -> str:
    """``maxmemory`` set to the memory the job store uses now (``noeviction``): every command
    that may add memory answers ``OOM`` for ``full_s``; then the limit is lifted."""
    client = redis.Redis(port=server.port)
    try:
        # Redis leaves its AOF buffer out of the count, so the limit that refuses the next write
        # lies a little below used_memory: step down until a 1 KiB write is refused.
        limit = int(client.info("memory")["used_memory"])
        while True:
            client.config_set("maxmemory", limit)
            try:
                client.set(PROBE_KEY, "x" * 1024)
            except redis.exceptions.OutOfMemoryError:
                break
            limit = int(limit * 0.95)
            assert limit > 0, "the job store took writes at any maxmemory"
        time.sleep(full_s)
        client.config_set("maxmemory", 0)
        client.delete(PROBE_KEY)
    finally:
        client.close()
    return f"at maxmemory (noeviction) for {full_s:.0f} s: every write answers OOM"


def store_frozen(server: EmbeddedRedis, frozen_s: float) -> str:
    """SIGSTOP the job store for ``frozen_s`` (connections open, nothing answers), SIGCONT."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        time.sleep(frozen_s)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    return f"SIGSTOPped for {frozen_s:.0f} s"


def store_read_only(server: EmbeddedRedis, read_only_s: float) -> str:
    """Make the job store a replica for ``read_only_s`` (of 127.0.0.2 on a port nothing listens
    on, so it never syncs and keeps its data): it serves reads, and every write answers
    ``READONLY``, as a primary demoted by a failover does; then it is a primary again."""
    client = redis.Redis(port=server.port)
    try:
        client.execute_command("REPLICAOF", "127.0.0.2", free_port("127.0.0.2"))
        with_probe = False
        try:
            client.set(PROBE_KEY, "x")
            with_probe = True
        except redis.exceptions.ReadOnlyError:
            pass
        assert not with_probe, "the job store took a write as a replica"
        time.sleep(read_only_s)
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.close()
    return f"read-only (a replica whose primary never answers) for {read_only_s:.0f} s"


def store_slow(server: EmbeddedRedis, slow_s: float, *, stop_s: float = 0.3) -> str:
    """Slow the job store for ``slow_s``: SIGSTOPped ``stop_s`` of every ``2 * stop_s``, so a
    command waits up to ``stop_s`` for its answer (a host that swaps, a saturated network)."""
    assert server.process is not None
    end = time.monotonic() + slow_s
    while time.monotonic() < end:
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(stop_s)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        time.sleep(stop_s)
    return f"slow for {slow_s:.0f} s (stopped {stop_s:.1f} s of every {2 * stop_s:.1f} s)"


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces; the fields after the closing paren are fixed
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry.name))
    return kids
