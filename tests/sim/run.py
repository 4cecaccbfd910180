"""One seed, one schedule: the real steps, a fake broker and clock, faults anywhere.

Every execution of a task runs in a greenlet. Each time it is about to touch the world (a job
store transition, NanoGPT, the audio host or store, a receiver, a publish, the ack) it yields to
the scheduler, which picks the next thing to happen with the seed's random generator: another
execution, a message taken, the releaser or the reconciler, a step of the clock, or a crash of
this execution (its pool child dies: the message is requeued) or of its whole worker (everything
the worker held stays unacked). So faults strike between any two side effects, and executions of
the same job interleave at every such point. Redis is real (the job store's Lua scripts run as in
production); the clock is not.

The job store fails too when a seed draws it (tests/sim/store.py: lost commands, late replies
with the script run or not, OOM on writes, a restart that loses the last second), below the
job store and the budget, at the client; and a task that raises is handled as Celery handles it
(:data:`STORE_ERROR_RETRIES`).

A worker may also die between kombu moving a message to ``unacked`` and our ``task_received``
handler recording its job (drawn from a generator of its own, :data:`P_KILL_AT_RECEIPT`, so the
other draws of a seed stay as they were until such a kill); the
reconciler's look at the ``unacked`` entries past ``workers.orphans.AGE_S`` (each once, our
messages given to the same receipt code) records such a job, as it does one whose record the
store refused at receipt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet
import kombu.exceptions
import redis

from tasks import names, steps
from tasks.adapters import acks, received
from tasks.audio.storage import download
from tasks.config import celery_config
from tasks.config.settings import Settings
from tasks.nanogpt.client import NanoGPTClient
from tasks.pacing.budget import Budget
from tasks.pacing.dispatch import Dispatcher
from tasks.pacing.learning import Learning
from tasks.record.jobs import DUE_KEY, POST_SENT, WAIT_KEY, JobStore
from tasks.record.states import NotifyState
from tasks.steps.context import Ctx
from tasks.sweeps import granting, reconcile
from tasks.webhooks.delivery import deliver
from tests.sim import store as store_faults
from tests.sim.broker import Broker, Held, Message, PublishFailed, Worker
from tests.sim.truth import Counted, Truth
from tests.sim.world import (
    API_BASE,
    AUDIO_SHA256,
    Clock,
    Http,
    Ledger,
    MemoryStore,
    Plan,
    Transport,
)
from workers import orphans

# Production defaults but shorter waits, so that a schedule plays out in a few simulated
# minutes; the recovery grace and reconcile interval are production's.
SIM_ENV = {
    "NANOGPT_API_KEY": "sim-key",
    "NANOGPT_BASE_URL": API_BASE,
    "TTS_POLL_INTERVAL": "3",
    "TTS_POLL_MAX_INTERVAL": "10",
    "TTS_POLL_TIMEOUT": "120",
    "TTS_MAX_RETRIES": "6",
    "TTS_RETRY_BASE_DELAY": "1",
    "TTS_RETRY_MAX_DELAY": "10",
    "TTS_HTTP_CONNECT_TIMEOUT": "2",
    "TTS_HTTP_READ_TIMEOUT": "5",
    "TTS_DOWNLOAD_TIMEOUT": "10",
    "TTS_RECOVERY_GRACE": "30",
    "TTS_RECONCILE_INTERVAL": "5",
    "TTS_WEBHOOK_RETRY_DELAY": "2",
    "TTS_WEBHOOK_MAX_RETRY_DELAY": "20",
    "TTS_WEBHOOK_RETRY_PERIOD": "120",
    "TTS_MAX_DELIVERIES": "5",
    "TTS_JOB_TTL": "3600",
}
MODEL = "Elevenlabs-Turbo-V2.5"
# What the fake Celery does with a task that raised. True: what tasks/adapters/tts.py `_run`
# does: acks.after_error, a retry of the same message (Task.retry: same task id, retries + 1, the
# re-sends counted in headers) after a backoff, carrying the answer the store could not take, the
# message given back if the broker refuses the retry. False: what plain Celery does
# (task_acks_on_failure_or_timeout at its default): the message is acknowledged, and the job is
# lost unless the reconciler watches it; `--store-errors-acked` is the way back to it.
STORE_ERROR_RETRIES = True
# How often every live worker puts back messages past the visibility timeout (kombu sweeps on
# its poll cycle; a few seconds apart).
RESTORE_EVERY_S = 10.0
# Seconds of simulated time a call to each part of the world takes.
LATENCY_S = {"upstream": (0.05, 1.5), "fetch": (0.05, 1.0), "webhook": (0.02, 0.5)}


class Crash(BaseException):
    """Thrown into an execution: ``child`` (its pool process died) or ``worker`` (SIGKILL)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Knobs:
    """How hostile this seed's world is."""

    workers: int
    prefetch: int
    concurrency: int
    p_crash: float  # per side effect of an execution
    p_worker_kill: float  # of those crashes, the share that kills the whole worker
    max_kills: int
    restart_s: tuple[float, float]
    p_duplicate: float
    p_reorder: float
    p_publish_fail: float
    # Kill the worker of whatever execution reaches this side-effect number first (a fault
    # placed by hand, for the regression cases); None: only p_crash.
    kill_at_event: int | None = None
    # Kill the worker taking the message of this take number (1 = the first message any worker
    # takes), after kombu's unacked write and before the record; None: P_KILL_AT_RECEIPT per
    # take in a world with crashes (p_crash > 0).
    kill_at_take: int | None = None
    # The fleet's NanoGPT budget (calls/s; 0 off) and burst: slow ones make calls wait.
    upstream_rate: float = 0.0
    upstream_burst: int = 1

    @classmethod
    def draw(cls, rng: random.Random) -> Knobs:
        return cls(
            workers=rng.randint(1, 3),
            prefetch=rng.randint(1, 8),
            concurrency=rng.randint(1, 4),
            p_crash=rng.choice((0.0, 0.01, 0.03, 0.08)),
            p_worker_kill=0.3,
            max_kills=3,
            restart_s=(1.0, 20.0),
            p_duplicate=rng.choice((0.0, 0.0, 0.05)),
            p_reorder=rng.choice((0.0, 0.2)),
            p_publish_fail=rng.choice((0.0, 0.0, 0.02)),
            upstream_rate=rng.choice((0.0, 0.2, 1.0, 20.0)),
            upstream_burst=rng.randint(1, 3),
        )


# Share of plans whose caller sends tts.cancel, and by when (seconds after the first submits):
# late enough to find a job in any state, from not yet received to long finished.
P_CANCEL = 0.15
CANCEL_WITHIN_S = 20.0
# Chance, per message taken in a world with crashes, that its worker is SIGKILLed after
# kombu's unacked write and before the record (within the seed's kill limit).
P_KILL_AT_RECEIPT = 0.005

SUBMIT_FAULTS = ("refused", "refused", "503", "429:1", "429:3", "500", "502html", "lost", "400")
STATUS_FAULTS = ("refused", "timeout", "503", "500", "429:1", "malformed")


# Share of seeds that run with TTS_REUSE_TTL (identical requests served once), drawn from a
# generator of their own so every other draw of a seed stays as it was; of their plans, the
# share that sends the same text as an earlier one, and the share that opts out (reuse=False).
P_REUSE_SEED = 0.4
REUSE_TTL_S = 600
P_SAME_TEXT = 0.6
P_REUSE_OFF = 0.15


def draw_reuse(seed: int, plans: list[Plan]) -> bool:
    """Whether this seed serves identical requests once; if so, group some of its plans."""
    rng = random.Random(f"reuse:{seed}")
    if rng.random() >= P_REUSE_SEED:
        return False
    for plan in plans:
        earlier = [p for p in plans if p.index < plan.index]
        if earlier and rng.random() < P_SAME_TEXT:
            root = rng.choice(earlier)
            plan.group = root.index if root.group is None else root.group
        plan.reuse = rng.random() >= P_REUSE_OFF
    return True


def draw_plans(rng: random.Random, n: int) -> list[Plan]:
    def some(vocabulary: tuple[str, ...], p: float, most: int) -> list[str]:
        if rng.random() >= p:
            return []
        return [rng.choice(vocabulary) for _ in range(rng.randint(1, most))]

    plans = []
    for i in range(n):
        plans.append(
            Plan(
                index=i,
                task_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                mode=rng.choices(("async", "sync_json", "sync_bytes"), (6, 2, 2))[0],
                outcome=rng.choices(("completed", "error", "content_policy"), (8, 1, 1))[0],
                pending_polls=rng.randint(0, 4),
                job_id=None if rng.random() < 0.6 else f"job-{i}",
                notify=rng.random() < 0.9,
                submit_faults=some(SUBMIT_FAULTS, 0.3, 3),
                status_faults=some(STATUS_FAULTS, 0.3, 3),
                audio_faults=some(("500", "cut", "404"), 0.15, 2),
                hook_faults=some(("500", "hang", "410"), 0.3, 3),
            )
        )
    return plans


# Settings by the values given and the process's environment (pydantic-settings reads all of
# it for the fields not given): a seed draws one of a few dozen, and building one took 1.2 ms,
# 2 % of a seed.
_Pairs = tuple[tuple[str, str], ...]
_SETTINGS: dict[tuple[_Pairs, _Pairs], Settings] = {}


def settings(values: dict[str, str]) -> Settings:
    """``Settings(**values)``, built once per ``values`` and environment (it is frozen)."""
    key = (tuple(sorted(values.items())), tuple(sorted(os.environ.items())))
    if key not in _SETTINGS:
        _SETTINGS[key] = Settings(**values)  # type: ignore[arg-type]
    return _SETTINGS[key]


@dataclass
class Execution:
    worker: Worker
    held: Held
    g: greenlet.greenlet
    wake_at: float
    label: str = "start"
    loaded_at: int = 0  # the event at which it last read its job (jobs.load)
    # The job whose POST it marked as leaving (post_sent: seq 1, after begin_post or take_over_post)
    # and has not sent yet: a crash now leaves the job in doubt, the one case where
    # SUBMIT_UNCONFIRMED without a POST is right (a claim not yet marked provably sent nothing,
    # and its job must not end in doubt).
    claim: str | None = None
    spent_at: float | None = None  # when it took the budget's token it has not used yet


@dataclass
class Settle:
    """One call of ``JobStore.settle``: what it returned and what it did to the record."""

    job_id: str
    event: int
    returned: bool | None  # None: it raised (a job-store fault)
    before: str | None  # the record's outcome_id before the call
    after: str | None  # and right after it (no other execution runs in between)
    outcome: dict[str, Any] | None  # the record's outcome right after it


class Gated:
    """A part of the world whose every method call is a point where the scheduler may switch."""

    def __init__(self, sim: Sim, target: Any, name: str) -> None:
        self._sim = sim
        self._target = target
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if not callable(value):
            return value
        label = f"{self._name}.{attr}"

        def call(*args: Any, **kwargs: Any) -> Any:
            sim = self._sim
            # When a NanoGPT call leaves (the simulation's latency is its round trip).
            sent_at = sim.clock()
            sim.gate(label)
            if label.startswith("upstream."):
                sim.call_times.append(sim.token_time(sent_at))
                if sim.current is not None:
                    sim.current.claim = None  # the POST it claimed has left
            if label == "jobs.settle":
                return sim.settle(value, *args, **kwargs)
            if label == "upstream.status":
                # When this execution last read the job: a poll must have seen it open.
                sim.status_calls.setdefault(args[0].run_id, []).append(sim.loaded_at)
            if label == "upstream.submit" and sim.current is not None:
                # Per job: with identical requests, one text is many jobs'.
                jid = str(sim._job_of(sim.current.held.message))
                sim.post_calls.setdefault(jid, []).append(sim.loaded_at)
            if label == "store.save":
                sim.store_calls.setdefault(kwargs["job_id"], []).append(sim.loaded_at)
            try:
                result = value(*args, **kwargs)
            finally:
                if label == "jobs.post_sent" and sim.current is not None:
                    # Marked (even if its reply was lost): a crash before the POST leaves, or
                    # before a retry carries the knowledge that it did not, leaves it in doubt.
                    job = sim.truth.get(args[0])
                    if job is not None and (job.token, job.seq) == (args[1], POST_SENT):
                        sim.current.claim = args[0]
            if label == "budget.spend":
                if result == 0.0:
                    sim.spends += 1
                    sim.spent_at[args[0]] = sim.clock()
                    if sim.current is not None:
                        sim.current.spent_at = sim.clock()
                else:
                    sim.report.deferred += 1
            if label == "jobs.load":
                sim.loaded_at = sim.transport.events
            return result

        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._sim.gate(self._name)
        return self._target(*args, **kwargs)


@dataclass
class Report:
    seed: int
    jobs: int
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    sim_s: float = 0.0
    executions: int = 0
    crashes: Counter[str] = field(default_factory=Counter)
    cancels: int = 0  # tts.cancel messages callers sent
    deferred: int = 0  # NanoGPT calls not made for want of budget (the step parked its job)
    store: store_faults.Stats | None = None  # what the job store's faults did (None: off)
    store_errors: int = 0  # executions that ended on a job-store error
    # Messages a dead worker held that came back only after the visibility timeout.
    restored: int = 0
    # Workers SIGKILLed between taking a message and recording its job.
    kills_at_receipt: int = 0
    # Jobs answered by an identical request (reused_from), on a seed with TTS_REUSE_TTL.
    reused: int = 0


class Sim:
    def __init__(
        self,
        seed: int,
        client: redis.Redis,
        *,
        knobs: Knobs | None = None,
        store_faults_on: frozenset[str] | None = None,
        reuse: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        random.seed(seed)  # the schedule's jitter draws from the module's generator
        # The seed's own reads, and the workers' commands (Counted), each hold one connection of
        # ``client``'s pool until close(): taking one from the pool and giving it back for each
        # command was a tenth of a seed's time.
        self.client = redis.Redis(
            connection_pool=client.connection_pool, single_connection_client=True
        )
        self.clock = Clock()
        self.knobs = knobs or Knobs.draw(self.rng)
        self.plans = draw_plans(self.rng, self.rng.randint(1, 5))
        budget_env = {
            "TTS_UPSTREAM_RATE": repr(self.knobs.upstream_rate),
            "TTS_UPSTREAM_BURST": str(self.knobs.upstream_burst),
        }
        # ``reuse``: may this seed draw TTS_REUSE_TTL (the hand-made cases keep their worlds).
        self.reuse = reuse and draw_reuse(seed, self.plans)
        reuse_env = {"TTS_REUSE_TTL": str(REUSE_TTL_S if self.reuse else 0)}
        self.settings = settings({**SIM_ENV, **budget_env, **reuse_env})
        s = self.settings
        self.ledger = Ledger()
        self.transport = Transport(self.clock, self.plans, self.ledger)
        self.http = Http(self.transport, (s.http_connect_timeout_s, s.http_read_timeout_s))
        self.store = MemoryStore(self.clock, {self.job_id(p): p for p in self.plans})
        self.broker = Broker(
            self.rng,
            visibility_timeout_s=celery_config.celery_config(s)["broker_transport_options"][
                "visibility_timeout"
            ],
            p_duplicate=self.knobs.p_duplicate,
            p_reorder=self.knobs.p_reorder,
            p_publish_fail=self.knobs.p_publish_fail,
        )
        upstream = NanoGPTClient(
            self.http.session,
            base_url=s.base_url,
            api_key="sim-key",
            timeout_s=(s.http_connect_timeout_s, s.http_read_timeout_s),
            max_audio_bytes=s.max_audio_bytes,
            audio_timeout_s=s.download_timeout_s,
        )
        # The job store's faults strike the client the job store, the budget and the releaser
        # use; the simulation reads the truth through a client of its own.
        on = store_faults.STORE_FAULTS if store_faults_on is None else store_faults_on
        plan = store_faults.StorePlan.draw(seed, self.clock(), on)
        self.faults: store_faults.Faults | None = None
        worker_client = Counted(client)
        if on:  # even if this seed drew none: a hand-made case may place its own
            self.faults = store_faults.Faults(seed, plan, self.clock, client)
            worker_client = store_faults.FaultyRedis(client, self.faults)
        self.worker_client = worker_client
        self.truth = Truth(
            JobStore(self.client, ttl_s=s.job_ttl_s, clock=self.clock),
            lambda: worker_client.writes + (self.faults.stats.restarts if self.faults else 0),
        )
        jobs = JobStore(worker_client, ttl_s=s.job_ttl_s, clock=self.clock)
        self.ctx = Ctx(
            settings=s,
            jobs=Gated(self, jobs, "jobs"),  # type: ignore[arg-type]
            upstream=Gated(self, upstream, "upstream"),
            fetch=Gated(self, lambda url, **kw: download(self.http, url, **kw), "fetch"),  # type: ignore[arg-type]
            audio_store=Gated(self, self.store, "store"),  # type: ignore[arg-type]
            webhook=Gated(
                self,
                lambda url, body, *, msg_id: deliver(
                    self.http, url, body, msg_id=msg_id, secret=None
                ),
                "webhook",
            ),  # type: ignore[arg-type]
            dispatch=Dispatcher(self._send, lambda: s),
            clock=self.clock,
            budget=Gated(  # type: ignore[arg-type]
                self,
                Budget(
                    worker_client,
                    rate_per_s=s.upstream_rate_per_s,
                    burst=s.upstream_burst,
                    clock=self.clock,
                    script_clock=self.clock,  # the sim's time, not Redis'
                ),
                "budget",
            ),
            # What the fleet learns goes through the faulty client too: a lost read or write
            # must only cost the aim, never a job.
            learning=Learning(worker_client, clock=self.clock),
        )
        # The releaser threads' standing: the lock and the ranking they grant from.
        self.granting = granting.Releasing(owner="sim")
        self.main = greenlet.getcurrent()
        self.workers: list[Worker] = []
        self.executions: list[Execution] = []
        self.restarts: list[float] = []
        self.kills = 0
        # Per job, the event of its first successful settle; and every settle call made.
        self.settled: dict[str, int] = {}
        self.settles: list[Settle] = []
        # When each NanoGPT call's token was taken (submits and status calls alike), for the
        # budget's bound; and per job, when it last took one (see token_time).
        self.call_times: list[float] = []
        self.spent_at: dict[str, float] = {}
        # Jobs left in doubt by a crash between marking their POST as leaving and sending it.
        self.in_doubt: set[str] = set()
        self.current: Execution | None = None  # the execution running now (None: background)
        # A hand-made case may hold an execution at a side effect (seconds more before it goes
        # on), to force an interleaving: called with the label it is about to pass.
        self.stall: Callable[[Sim, Execution, str], float] | None = None
        # Per run id, for each status call: the event at which its execution read the job.
        self.status_calls: dict[str, list[int]] = {}
        # The same for every POST and every store (per job id).
        self.post_calls: dict[str, list[int]] = {}
        self.store_calls: dict[str, list[int]] = {}
        self.loaded_at = 0
        self.spends = 0  # budget.spend calls that allowed a NanoGPT call
        self.report = Report(seed, len(self.plans))
        self.trace: list[str] | None = None  # every side effect, for replaying a seed by eye
        self.running = ""
        self.start = self.clock()
        self.end_at = self.start  # see _horizon
        self.base_end = self.start  # the schedule's own end (run), before any visibility timeout
        # Jobs whose record the store refused at receipt (see _take_and_start); and when each
        # job's first successful settle happened.
        self.unrecorded: set[str] = set()
        self.settled_s: dict[str, float] = {}
        # workers/orphans.py: the unacked entries taken before this were looked at.
        self.orphans_cursor = self.start
        self.receipt_rng = random.Random(f"receipt-{seed}")
        self.takes = 0

    def close(self) -> None:
        """Give back the connections the seed held (its own client's and the workers')."""
        self.client.close()
        self.worker_client.close()

    # --- identities -------------------------------------------------------------------------

    def job_id(self, plan: Plan) -> str:
        return plan.job_id or plan.task_id

    def new_task_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def token_time(self, sent_at: float) -> float:
        """When the token of the NanoGPT call leaving now was taken: by this execution, just
        before; or, for a POST whose claim's reply was lost (tasks/steps/submit.py takes it over
        without spending again, so no token is burned), by the execution that lost it, up to a
        retry's backoff earlier. The limiter's bound holds for the tokens; such a POST leaves
        that much later than its token (RELIABILITY.md)."""
        ex = self.current
        if ex is None:
            return sent_at
        taken_at, ex.spent_at = ex.spent_at, None
        if taken_at is None:
            taken_at = self.spent_at.get(str(self._job_of(ex.held.message)))
        return sent_at if taken_at is None else taken_at

    # --- what steps call ----------------------------------------------------------------------

    def gate(self, label: str) -> None:
        """A side effect is about to happen: let the scheduler decide what comes first."""
        self.transport.events += 1
        if self.trace is not None:
            at_s = self.clock() - self.start
            self.trace.append(f"{self.transport.events} t={at_s:.2f} {label} {self.running}")
        if greenlet.getcurrent() is self.main:
            return
        self.main.switch(label)

    def _send(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
    ) -> None:
        self.gate(f"publish.{name}")
        message = Message(task_id or self.new_task_id(), name, tuple(args), dict(kwargs))
        self.broker.publish(message)

    def settle(self, settle: Callable[..., bool], job_id: str, *args: Any, **kwargs: Any) -> bool:
        """``JobStore.settle``, with what it returned and what it did to the record kept (the
        record is read just before and after: no other execution runs in between)."""
        found = self.client.hmget(self.truth.key(job_id), "outcome_id")[0]
        raw = None if found is None else str(found)
        call = Settle(job_id, self.transport.events, None, raw, raw, None)
        self.settles.append(call)
        try:
            call.returned = settle(job_id, *args, **kwargs)
        finally:
            after = self.truth.get(job_id)
            call.after = after.outcome_id if after else None
            call.outcome = after.outcome if after else None
        if call.returned:
            self.settled.setdefault(job_id, call.event)
            self.settled_s.setdefault(job_id, self.clock())
        return call.returned

    def _job_of(self, message: Message) -> str | None:
        """The job a message acts for (None: a cancel, which promises no job of its own)."""
        if message.name == names.CANCEL:
            return None
        if message.name in (names.SUBMIT_TTS, names.POLL_TTS):
            given = message.kwargs.get("job_id")
            if given is not None:
                return str(given)
            return message.task_id if message.name == names.SUBMIT_TTS else str(message.args[0])
        return str(message.args[0])

    def _unsafe_ack(self, message: Message) -> str | None:
        """Why acknowledging ``message`` now would lose its job (None: it would not): a job is
        safe when its record is on the reconciler's watch or parked (it will be acted on), or
        has its outcome with the webhook settled (ended)."""
        jid = self._job_of(message)
        if jid is None:
            return None
        job = self.truth.get(jid)
        if job is None:
            return "no record"
        if job.outcome is not None and job.notify_state not in (None, NotifyState.QUEUED):
            return None
        if self.truth.watched(jid):
            return None
        return f"{job.status}, watched by nothing"

    # --- executions ---------------------------------------------------------------------------

    def _body(self, held: Held) -> tuple[str, Any]:
        """One execution, as ``_run`` in tasks/adapters/tts.py handles it: a step that returned
        is acked (a :class:`steps.Retry` first publishes its copy); a step that raised goes to
        :func:`acks.after_error` (a copy of the same message, its re-sends counted in headers
        apart from the step's own retries, or its job ended); a copy that cannot be published
        gives the message back (``Reject(requeue=True)``), never acks it."""
        message = held.message
        resent = acks.Resent.of(message.headers)
        retries = max(0, message.retries - resent.total)
        d = steps.Delivery(message.name, message.task_id, retries, resent.total)
        try:
            self.gate("begin")
            try:
                result = steps.STEPS[message.name](self.ctx, d, *message.args, **message.kwargs)
            except Crash:
                raise
            except Exception as exc:
                if not STORE_ERROR_RETRIES:
                    # Celery acks a failed task (see STORE_ERROR_RETRIES).
                    cause = exc.__cause__ if isinstance(exc, steps.AnswerUnrecorded) else exc
                    return ("error", cause)
                return self._after_error(message, d, resent, exc)
            if isinstance(result, steps.Retry):
                countdown_s = self.ctx.dispatch.countdown_s(result.wait_s)
                if not self._publish_retry(message, countdown_s, resent, {}):
                    return ("given-back", result)
            self.gate("ack")
            return ("ok", result)
        except Crash as crash:
            return ("crash", crash.kind)

    def _after_error(
        self, message: Message, d: steps.Delivery, resent: acks.Resent, exc: Exception
    ) -> tuple[str, Any]:
        job_of = lambda: acks.job_of(message.name, d, message.args, message.kwargs)  # noqa: E731
        again = acks.after_error(self.ctx, d, exc, resent, job_of)
        if again is None:
            self.gate("ack")
            return ("ended", exc)  # a step that kept raising: its job ended WORKER_LOST
        # What a submit learnt and could not record travels with the retry.
        carried = {"accepted": exc.answer} if isinstance(exc, steps.AnswerUnrecorded) else {}
        countdown_s = self.ctx.dispatch.countdown_s(again.wait_s)
        if not self._publish_retry(message, countdown_s, again.resent, carried):
            return ("given-back", exc)
        self.gate("ack")
        return ("retried", exc)

    def _publish_retry(
        self, message: Message, countdown_s: float, resent: acks.Resent, carried: dict[str, Any]
    ) -> bool:
        """Celery's ``Task.retry``: the same message again (same id, retries + 1, the re-send
        counts in its headers) after ``countdown_s``; False if the broker refused it."""
        self.gate("retry")
        again = Message(
            message.task_id,
            message.name,
            message.args,
            {**message.kwargs, **carried},
            retries=message.retries + 1,
            eta=self.clock() + countdown_s,
            headers={**message.headers, **resent.headers()},
        )
        try:
            self.broker.publish(again)
        except PublishFailed:
            return False
        if carried and self.current is not None:
            self.current.claim = None  # the retry knows the POST did not leave
        return True

    def _start(self, worker: Worker, held: Held) -> None:
        held.running = True
        g = greenlet.greenlet(self._body)
        self.executions.append(Execution(worker, held, g, self.clock()))
        self.report.executions += 1

    def _resume(self, ex: Execution) -> None:
        k = self.knobs
        self.current = ex
        placed = k.kill_at_event is not None and self.transport.events >= k.kill_at_event
        if ex.label != "start" and (placed or self.rng.random() < k.p_crash):
            kill = placed or (self.rng.random() < k.p_worker_kill and self.kills < k.max_kills)
            if placed:
                k.kill_at_event = None
            outcome = ex.g.throw(Crash("worker" if kill else "child"))
        else:
            m = ex.held.message
            if self.trace is not None:
                job = str(m.kwargs.get("job_id") or m.args[0])[:8]
                self.running = f"w{ex.worker.wid} {m.name} {m.task_id[:8]} r{m.retries} {job}"
            self.loaded_at = ex.loaded_at
            outcome = ex.g.switch(ex.held) if ex.label == "start" and not ex.g else ex.g.switch()
            ex.loaded_at = self.loaded_at
        self.current = None
        if ex.g.dead:
            self.executions.remove(ex)
            self._finish(ex, outcome)
            return
        ex.label = str(outcome)
        part = ex.label.split(".")[0]
        low, high = LATENCY_S.get(part, (0.0, 0.0))
        ex.wake_at = self.clock() + (self.rng.uniform(low, high) if high else 0.0)
        if self.stall is not None:
            ex.wake_at += self.stall(self, ex, ex.label)

    def _finish(self, ex: Execution, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        if kind == "crash":
            self.report.crashes[value] += 1
            if ex.claim is not None:
                self.in_doubt.add(ex.claim)
            if value == "worker":
                self._kill(ex.worker)
            else:
                self.broker.requeue(ex.worker, ex.held)
            return
        message = ex.held.message
        error = value.__cause__ if isinstance(value, steps.AnswerUnrecorded) else value
        if isinstance(error, redis.RedisError):
            self.report.store_errors += 1
        if isinstance(error, Exception) and not _awaited(error):
            # Not the store or the broker being away: a bug (retried by acks.after_error all
            # the same, and its job ended after TTS_MAX_DELIVERIES).
            self.report.violations.append(f"{message.name} raised {error!r}")
        if kind == "given-back":
            self.broker.requeue(ex.worker, ex.held)  # Reject(requeue=True): not acked
            return
        # A retry handed the work to a new message (in the broker now): that one holds it.
        retried = kind == "retried" or isinstance(value, steps.Retry)
        unsafe = None if retried else self._unsafe_ack(message)
        if unsafe is not None:
            self.report.violations.append(
                f"job {self._job_of(message)}: {message.name} acknowledged ({kind}"
                f"{f': {value!r}' if kind != 'ok' else ''}) with its job neither durable nor "
                f"ended ({unsafe})"
            )
        self.broker.ack(ex.worker, ex.held)

    def _kill(self, worker: Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        self.kills += 1
        for other in [e for e in self.executions if e.worker is worker]:
            self.executions.remove(other)
            if other.claim is not None:
                self.in_doubt.add(other.claim)
            if other.g:
                other.g.throw(Crash("worker"))
        worker.held.clear()  # what it held stays in the broker's unacked table
        self.restarts.append(self.clock() + self.rng.uniform(*self.knobs.restart_s))

    # --- the loop -----------------------------------------------------------------------------

    def _spawn_worker(self) -> None:
        k = self.knobs
        self.workers.append(Worker(len(self.workers), k.prefetch, k.concurrency))

    def _take_and_start(self) -> bool:
        now = self.clock()
        moved = False
        alive = [w for w in self.workers if w.alive]
        self.rng.shuffle(alive)
        for worker in alive:
            while worker.counted(now) < worker.prefetch:
                held = self.broker.take(worker, now)
                if held is None:
                    break
                m = held.message
                if self._killed_at_receipt():
                    # SIGKILLed after kombu's unacked write, before the record: only the
                    # reconciler's look at the unacked entries finds this job now.
                    self.report.kills_at_receipt += 1
                    self._kill(worker)
                    break
                # workers/signals.py logs a failure to record it: the task records the job.
                try:
                    received.on_received(
                        self.ctx, m.name, m.task_id, m.args, m.kwargs, start_at=m.eta
                    )
                except redis.RedisError:
                    # Until a task records it, the message is the job's only copy: a worker
                    # killed holding it leaves it to the visibility timeout.
                    self.unrecorded.add(str(self._job_of(m)))
                except PublishFailed:
                    # A cancel acting on receipt recorded its outcome, then its webhook's
                    # publish failed: the record is on the reconciler's watch, which sends it.
                    # (workers/signals.py logs any exception here and goes on.)
                    pass
                moved = True
            for held in worker.waiting(now)[: worker.concurrency - worker.running()]:
                self._start(worker, held)
                moved = True
        return moved

    def _killed_at_receipt(self) -> bool:
        """Whether the worker that has just taken a message dies before recording its job."""
        k = self.knobs
        self.takes += 1
        if self.kills >= k.max_kills:
            return False
        if k.kill_at_take is not None:
            return self.takes == k.kill_at_take
        return k.p_crash > 0 and self.receipt_rng.random() < P_KILL_AT_RECEIPT

    def _background(self, next_at: dict[str, float]) -> None:
        now = self.clock()
        if not any(w.alive for w in self.workers):
            return
        if now >= next_at["release"]:
            try:  # one path: the budget's tokens, or unlimited ones in batches when it is off
                while (
                    granting.release(self.ctx, rand=self.rng.random, state=self.granting)
                    >= granting.UNLIMITED_BATCH
                    and not self.ctx.budget.on
                ):
                    pass
            except (PublishFailed, redis.RedisError):
                pass  # workers/poll_releaser.py logs it and tries again on a later tick
        if now >= next_at["reconcile"]:
            next_at["reconcile"] = now + self.settings.reconcile_interval_s
            # workers/reconciler.py: the look at kombu's unacked entries, then the scan; a
            # store error ends the tick.
            with contextlib.suppress(PublishFailed, redis.RedisError):
                self._look_at_unacked(now)
                reconcile.scan(self.ctx)
        if now >= next_at["restore"]:
            next_at["restore"] = now + RESTORE_EVERY_S
            self.report.restored += self.broker.restore_visible(now)

    def _look_at_unacked(self, now: float) -> None:
        """workers/orphans.py's sweep on this broker's unacked table: each entry taken since the
        cursor and at least ``AGE_S`` ago, once; a message of ours goes through the receipt code
        again (a no-op where the record exists). A store error leaves the cursor where it was."""
        upto = now - orphans.AGE_S
        entries = sorted(self.broker.unacked.values(), key=lambda entry: entry[1])
        for m, taken_at, _ in entries:
            if not self.orphans_cursor <= taken_at <= upto or m.name not in names.QUEUES:
                continue
            # A cancel's webhook publish failing is logged and left, as the worker does.
            with contextlib.suppress(PublishFailed):
                received.on_received(self.ctx, m.name, m.task_id, m.args, m.kwargs, start_at=m.eta)
        self.orphans_cursor = upto

    def _unlooked(self) -> bool:
        """An unacked entry the look at them has not reached yet."""
        return any(at >= self.orphans_cursor for _, at, _ in self.broker.unacked.values())

    def _next_parked(self) -> float:
        now = self.clock()
        # Waiting submits score below every poll: one count holds both kinds.
        if self.ctx.budget.on and self.truth.waiting_due(now):
            # Jobs wait for tokens: the releaser ticks as workers' do (workers/poll_releaser.py).
            s = self.settings
            return now + min(0.2, s.upstream_burst / s.upstream_rate_per_s / 2)
        first = self.truth.first_waiting()
        return float(first) if first is not None else float("inf")

    def _quiet(self) -> bool:
        if self.executions or self.broker.pending():
            return False
        if self.faults is not None and self.faults.restart_pending():
            return False  # a restart to come may still roll the last second back
        if any(w.held for w in self.workers if w.alive):
            return False
        for plan in self.plans:
            job = self.truth.get(self.job_id(plan))
            if job is None or job.outcome is None or job.notify_state in (None, NotifyState.QUEUED):
                return False
        return True

    def _horizon(self, base: float) -> float:
        """When the schedule ends: ``base``, or later while a dead worker's messages still wait
        in the broker's unacked table, until the visibility timeout gives them back and they
        play out. Such a message is the only copy of a job whose record the store refused on
        receipt (OOM, a lost command): not lost, late by up to the visibility timeout, and the
        job must still end then."""
        alive = {w.wid for w in self.workers if w.alive}
        taken = [at for _, at, wid in self.broker.unacked.values() if wid not in alive]
        if taken:
            back_at = max(taken) + self.broker.visibility_timeout_s + RESTORE_EVERY_S
            self.end_at = max(self.end_at, back_at + (base - self.start))
        return max(base, self.end_at)

    def _move_clock(self, to: float) -> None:
        """The clock moves to ``to``, the job store's AOF and restart with it (a jump that
        skipped them once rolled a restart back to a copy tens of seconds old)."""
        if self.faults is not None:
            self.faults.advance(to)
        self.clock.now = to
        if self.faults is not None:
            self.faults.restart_if_due()

    def _idle_until_restored(self) -> float | None:
        """When a dead worker's first unacked message comes back, if until then nothing can
        happen: no execution, nothing queued or held by a live worker, no restart to come,
        and every job with a record ended and announced (the rest exist only in those
        messages). None otherwise."""
        if self.executions or self.broker.pending():
            return None
        if self.faults is not None and self.faults.restart_pending():
            return None
        if any(w.held for w in self.workers if w.alive):
            return None
        alive = {w.wid for w in self.workers if w.alive}
        taken = [at for _, at, wid in self.broker.unacked.values() if wid not in alive]
        if not taken or self._unlooked():
            return None
        for plan in self.plans:
            job = self.truth.get(self.job_id(plan))
            if job is not None and (
                job.outcome is None or job.notify_state in (None, NotifyState.QUEUED)
            ):
                return None
        return min(taken) + self.broker.visibility_timeout_s + 0.001

    def _cancel_some(self, start: float) -> None:
        """Callers that send ``tts.cancel`` for their job at a random time (or the plan's own
        ``cancel_after_s``). Drawn from a generator of their own, so every seed keeps the
        schedule it had before cancels."""
        rng = random.Random(f"cancel-{self.seed}")
        for plan in self.plans:
            if plan.cancel_after_s is None and rng.random() < P_CANCEL:
                plan.cancel_after_s = rng.uniform(0, CANCEL_WITHIN_S)
            if plan.cancel_after_s is None:
                continue
            task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            eta = start + plan.cancel_after_s
            message = Message(task_id, names.CANCEL, (self.job_id(plan),), {}, eta=eta)
            self.broker.publish(message, fail_ok=False)
            self.report.cancels += 1

    def run(self) -> Report:
        self.client.flushdb()
        self.truth.forget()
        self.transport.know(self.plans)
        self.store.plans = {self.job_id(p): p for p in self.plans}
        self.report.jobs = len(self.plans)
        # The knobs as a hand-made case may have reshaped them after the broker was built.
        k = self.knobs
        self.broker.p_duplicate, self.broker.p_reorder = k.p_duplicate, k.p_reorder
        self.broker.p_publish_fail = k.p_publish_fail
        for _ in range(self.knobs.workers):
            self._spawn_worker()
        start = self.clock()
        for plan in sorted(self.plans, key=lambda _: self.rng.random()):
            kwargs: dict[str, Any] = {}
            if plan.notify_url:
                kwargs["notify_url"] = plan.notify_url
            if plan.job_id:
                kwargs["job_id"] = plan.job_id
            if not plan.reuse:
                kwargs["reuse"] = False
            # Now-ish, or (a caller's countdown) longer than the poll timeout.
            later = self.rng.random() < 0.1
            eta = start + self.rng.uniform(0, 1.5 * self.settings.poll_timeout_s if later else 3)
            self.broker.publish(
                Message(plan.task_id, "tts.submit_tts", (plan.text, MODEL), kwargs, eta=eta),
                fail_ok=False,
            )
            # Stores that are down for a while from the start: the inline audio must wait.
            if self.rng.random() < 0.2:
                plan.store_down_until = start + self.rng.uniform(0, 20)
        self._cancel_some(start)
        horizon = start + 4 * self.settings.poll_timeout_s + self.settings.webhook_retry_period_s
        self.base_end = horizon
        next_at = {"release": start, "reconcile": start, "restore": start + RESTORE_EVERY_S}
        while self.clock() <= self._horizon(horizon):
            now = self.clock()
            for when in [t for t in self.restarts if t <= now]:
                self.restarts.remove(when)
                self._spawn_worker()
            if not any(w.alive for w in self.workers):
                self._move_clock(min(self.restarts))
                continue
            self._take_and_start()
            due = [ex for ex in self.executions if ex.wake_at <= now]
            if due:
                self._resume(self.rng.choice(due))
                continue
            self._background(next_at)
            next_at["release"] = self._next_parked()
            if self._take_and_start():
                continue
            if self._quiet():
                break
            back_at = self._idle_until_restored()
            if back_at is not None and back_at > now:
                # Nothing to do for an hour of simulated time but wait: skip the idle ticks.
                self._move_clock(back_at)
                next_at["restore"] = back_at
                continue
            candidates = [ex.wake_at for ex in self.executions]
            candidates += [next_at["release"], next_at["reconcile"], *self.restarts]
            if self.broker.unacked:
                candidates.append(next_at["restore"])
            eta = self.broker.next_eta(self.workers, now)
            if eta is not None:
                candidates.append(eta)
            if self.faults is not None:
                store_at = self.faults.next_time()
                if store_at is not None:
                    candidates.append(store_at)
            self._move_clock(max(now + 0.001, min(candidates)))
        for ex in self.executions:
            ex.g.throw(greenlet.GreenletExit)
        self.report.sim_s = self.clock() - start
        self.report.store = self.faults.stats if self.faults is not None else None
        check(self)
        return self.report


def _awaited(exc: Exception) -> bool:
    """An error that says the job store or the broker is away for now (a wait, not a bug)."""
    return acks.store_unavailable(exc) or isinstance(exc, kombu.exceptions.OperationalError)


def check(sim: Sim) -> None:
    """The promises, checked after the schedule played out."""
    bad = sim.report.violations
    jobs = sim.truth
    calls = sum(len(c) for c in sim.status_calls.values()) + sum(
        len(c) for c in sim.post_calls.values()
    )
    if sim.ctx.budget.on and calls > sim.spends:
        bad.append(f"{calls} NanoGPT calls made with only {sim.spends} allowed by the budget")
    if sim.ctx.budget.on:
        rate_per_s, burst = sim.settings.upstream_rate_per_s, sim.settings.upstream_burst
        # A restart that lost the budget's last writes gives back the tokens spent in them (at
        # most burst + rate x the seconds lost): AOF everysec allows no better.
        lost_s = sim.faults.stats.lost_s if sim.faults is not None else 0.0
        extra = burst + rate_per_s * lost_s if lost_s else 0.0
        bad += budget_bound(sim.call_times, rate_per_s, burst, extra=extra)
    bad += settles_once(sim.settles, jobs)
    bad += reuse_kept(sim)
    for plan in sim.plans:
        jid = sim.job_id(plan)
        job = jobs.get(jid)
        if job is None or job.outcome is None:
            status = job.status if job else "no record"
            bad.append(f"job {jid}: no outcome by the end ({status})")
            continue
        ended_s = sim.settled_s.get(jid, 0.0)
        if ended_s > sim.base_end:
            # No job waits for a dead worker's messages to come back (the visibility timeout):
            # the reconciler re-sends what has a record within TTS_RECOVERY_GRACE, and records
            # from the unacked entries what has none (refused at receipt, or a worker killed
            # before recording it).
            unrecorded = " (its record refused at receipt)" if jid in sim.unrecorded else ""
            bad.append(
                f"job {jid}: ended {ended_s - sim.start:.0f} s in, after the visibility "
                f"timeout{unrecorded}"
            )
        error = job.outcome.get("error") or {}
        sim.report.outcomes[error.get("code", "completed")] += 1
        sim.report.reused += "reused_from" in job.outcome
        posts = len(sim.post_calls.get(jid, []))
        if error.get("code") == "SUBMIT_UNCONFIRMED" and not posts and jid not in sim.in_doubt:
            # Only a crash between marking the POST as leaving and sending it leaves a job in
            # doubt.
            bad.append(f"job {jid}: ended SUBMIT_UNCONFIRMED with no POST sent")
        if job.notify_state in (None, NotifyState.QUEUED):
            bad.append(f"job {jid}: webhook still queued at the end")
        # A reused job's audio is its source's (the same file, never a copy).
        stored = sim.store.saved.get(job.outcome.get("reused_from") or jid)
        if job.outcome["type"] == "tts.completed" and (
            stored is None or job.outcome["audio"]["sha256"] != AUDIO_SHA256
        ):
            bad.append(f"job {jid}: completed without its audio stored")
        hooks = [h for h in sim.ledger.hooks if h.job_id == jid]
        if not plan.notify and hooks:
            bad.append(f"job {jid}: webhook sent without a notify_url")
        if len({h.msg_id for h in hooks}) > 1:
            bad.append(f"job {jid}: {len({h.msg_id for h in hooks})} webhook-ids")
        said = {(h.body["type"], (h.body.get("error") or {}).get("code")) for h in hooks}
        if len(said) > 1:
            bad.append(f"job {jid}: announced {len(said)} different outcomes: {sorted(said)}")
        settled_at = sim.settled.get(jid)
        if job.run_id and settled_at is not None:
            # A poll already in flight when the outcome landed may finish its one call; a poll
            # that read the job after it ended must not call.
            late = [e for e in sim.status_calls.get(job.run_id, []) if e > settled_at]
            if late:
                bad.append(f"job {jid}: {len(late)} status calls after its outcome")
        if settled_at is not None:
            # Likewise a download (a submit) already in flight may finish its one store (POST);
            # one that read the job after it ended (a cancel, say) must not start one.
            late = [e for e in sim.store_calls.get(jid, []) if e > settled_at]
            if late:
                bad.append(f"job {jid}: {len(late)} stores after its outcome")
            late = [e for e in sim.post_calls.get(jid, []) if e > settled_at]
            if late:
                bad.append(f"job {jid}: {len(late)} POSTs after its outcome")
    keys = [k for k in sim.client.scan_iter(count=1000) if k not in (DUE_KEY, WAIT_KEY)]
    with sim.client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.ttl(key)
        ttls = pipe.execute()
    bad += [f"key {key} has no TTL" for key, ttl in zip(keys, ttls, strict=True) if ttl == -1]


def reuse_kept(sim: Sim) -> list[str]:
    """NanoGPT accepted each request at most once per job that made its own POST: a job
    answered by an identical request (``reused_from``) made no NanoGPT call, and a text
    no job shares was accepted at most once (the promise without reuse)."""
    bad: list[str] = []
    groups: dict[str, list[Plan]] = {}
    for plan in sim.plans:
        groups.setdefault(plan.text, []).append(plan)
    for text, plans in groups.items():
        own = 0
        for plan in plans:
            jid = sim.job_id(plan)
            job = sim.truth.get(jid)
            source = (job.outcome or {}).get("reused_from") if job else None
            if source is None:
                own += 1
                continue
            if sim.post_calls.get(jid):
                bad.append(f"job {jid}: reused job {source}'s outcome, yet sent a POST")
            if source not in {sim.job_id(p) for p in plans}:
                bad.append(f"job {jid}: reused {source}, which sent another request")
        accepted = sim.ledger.accepted.get(text, 0)
        if accepted > max(1, own):
            who = f"job {sim.job_id(plans[0])}" if len(plans) == 1 else repr(text)
            more = "" if len(plans) == 1 else f" for {own} jobs that made their own"
            bad.append(f"{who}: NanoGPT accepted its request {accepted} times{more}")
    return bad


# Slack on the budget's bound: its scripts count a token 1e-3 early (tasks/pacing/budget.py,
# _STATE).
BOUND_SLACK = 0.01


def budget_bound(
    times: list[float], rate_per_s: float, burst: int, *, extra: float = 0.0
) -> list[str]:
    """The limiter's own promise: in every window [t1, t2], at most burst + rate * (t2 - t1)
    NanoGPT calls (GCRA's bound; a lowered rate only tightens it). A sliding check over the
    calls in the order they left; the first window that breaks it, if any."""
    ordered = sorted(times)
    for j, last in enumerate(ordered):
        for i in range(j):
            window_s = last - ordered[i]
            if j - i + 1 > burst + rate_per_s * window_s + extra + BOUND_SLACK:
                return [
                    f"{j - i + 1} NanoGPT calls within {window_s:.3f} s, more than burst "
                    f"{burst} + {rate_per_s:g}/s allows"
                ]
    return []


def settles_once(settles: list[Settle], jobs: Truth) -> list[str]:
    """At most one settle per job took effect (said True, or changed the outcome); each said
    what it did; and the outcome the job ends with is the first one, with its id."""
    bad: list[str] = []
    by_job: dict[str, list[Settle]] = {}
    for call in settles:
        by_job.setdefault(call.job_id, []).append(call)
    for jid, calls in by_job.items():
        took = [c for c in calls if c.returned or c.after != c.before]
        if len(took) > 1:
            bad.append(f"job {jid}: settled {len(took)} times (events {[c.event for c in took]})")
        for c in calls:
            changed = c.after != c.before
            if c.returned is not None and c.returned != changed:
                bad.append(
                    f"job {jid}: a settle said {c.returned} but changed the outcome: {changed}"
                )
        if not took:
            continue
        first, job = took[0], jobs.get(jid)
        final = (job.outcome_id, job.outcome) if job is not None else (None, None)
        if final != (first.after, first.outcome):
            bad.append(
                f"job {jid}: ends with an outcome other than its first "
                f"({final[0]}, not {first.after})"
            )
    return bad


def run_seed(
    seed: int,
    client: redis.Redis,
    *,
    shape: Callable[[Sim], None] | None = None,
    trace: list[str] | None = None,
    store_faults_on: frozenset[str] | None = None,
    reuse: bool | None = None,
) -> Report:
    """Play one seed against ``client`` (a Redis database the simulation may flush).

    ``shape``: change the drawn world before it runs (knobs, plans), for the hand-made cases.
    ``trace``: filled with one line per side effect (``python -m tests.sim --seed N --trace``).
    ``store_faults_on``: the job store's fault families (default: ``store.STORE_FAULTS``).
    ``reuse``: whether the seed may draw TTS_REUSE_TTL (:func:`draw_reuse`; default: unless
    ``shape`` hand-makes the world).
    """
    may_reuse = shape is None if reuse is None else reuse
    sim = Sim(seed, client, store_faults_on=store_faults_on, reuse=may_reuse)
    try:
        sim.trace = trace
        if shape is not None:
            shape(sim)
        # Thousands of seeds log every fault they inject: quiet, then as it was (the suite's
        # later tests read these loggers with caplog).
        logger = logging.getLogger("tasks")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            return sim.run()
        finally:
            logger.setLevel(level)
    finally:
        sim.close()
