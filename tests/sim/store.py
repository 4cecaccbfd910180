"""The job store's own faults, injected into the Redis client the job store and the budget use.

The real Lua scripts still run on the real redis-server; what fails is the client's view of it,
the way a worker sees a job store in trouble (issue 19, item 7):

* ``errors``: a command lost on its way (a reset connection): not applied; ``ConnectionError``;
* ``timeouts``: a command whose reply is late: applied or not (half each), ``TimeoutError``. The
  dangerous one is a timeout after the script ran;
* ``oom``: for a few seconds every write answers ``OOM command not allowed...`` (Redis at
  ``maxmemory`` with ``noeviction``), reads still work;
* ``restart``: Redis restarts on its AOF (``appendfsync everysec``): everything written in the
  last second is gone, the script cache is empty, and for a few seconds commands are refused,
  then answer ``LOADING``.

What redis-py does with a failed command comes on top when :data:`CLIENT_RESENDS` is on: it
re-sends a command on a connection error or timeout (its default ``Retry``: up to ten times over
about 4 s), so a script whose reply was lost runs twice and the caller sees the
second answer; ``OOM`` is not re-sent. :data:`CLIENT_RESENDS` says whether the worker's client
does that.

Each seed draws its plan from a generator of its own (``store-<seed>``), so turning the faults on
or off does not change the rest of a seed's draws.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.sim.truth import READS, Counted, CountedPipeline

ALL_FAULTS = frozenset({"errors", "timeouts", "oom", "restart"})


def fault_families(text: str) -> frozenset[str]:
    """``all``, ``none`` (or empty), or a comma-separated list of :data:`ALL_FAULTS`."""
    text = text.strip().lower()
    if text == "all":
        return ALL_FAULTS
    chosen = frozenset(f.strip() for f in text.split(",") if f.strip() and f.strip() != "none")
    if not chosen <= ALL_FAULTS:
        raise ValueError(f"unknown job-store faults: {sorted(chosen - ALL_FAULTS)}")
    return chosen


#: The fault families the seeds draw (issue 19, item 7): ``errors,timeouts,oom`` by default, so
#: ``make check``'s 2,000 seeds meet them. ``restart`` stays opt-in (``SIM_STORE_FAULTS=all``):
#: with ``appendfsync everysec`` a restart loses the last second of writes, and a step may have
#: acted on a write in that second (a POST sent after its claim, a message acked after its job's
#: record or outcome was written) that no guard can see afterwards; Redis 7.0 has no ``WAITAOF``
#: (7.2+) to wait for the write to be on disk first. What it breaks (10 of seeds 0-599 with
#: ``--store-faults all``), and that ``appendfsync always`` on the job store removes it:
#: RELIABILITY.md ("Limits, stated plainly") and README ("Sizing Redis", "Durability").
DEFAULT_FAULTS = "errors,timeouts,oom"
STORE_FAULTS: frozenset[str] = fault_families(os.environ.get("SIM_STORE_FAULTS", DEFAULT_FAULTS))

#: Whether the worker's Redis client re-sends a command whose connection failed or timed out
#: (redis-py's default ``Retry``). Off: tasks/adapters/runtime.py builds the client with none
#: (``Retry(NoBackoff(), 0)``), so a script whose reply was lost is never run again unseen.
CLIENT_RESENDS = False
# redis-py 8's default Retry: up to 10 re-sends (DEFAULT_RETRY_COUNT), each after an exponential
# backoff with jitter from 10 ms (DEFAULT_RETRY_BASE) capped at 1 s (DEFAULT_RETRY_CAP): about 4 s
# in all, so the client rides out a short restart by itself. The simulation's clock does not move
# during one command: a re-send past the restart's end simply finds the store back.
RESENDS = 10
RESEND_BASE_S = 0.01
RESEND_CAP_S = 1.0


@dataclass
class StorePlan:
    """One seed's job-store faults: per-command odds and windows of simulated time."""

    p_lost_request: float = 0.0  # a command that never reached Redis: ConnectionError
    # A command whose reply is late (TimeoutError): half of them ran, half did not.
    p_lost_reply: float = 0.0
    oom: tuple[float, float] | None = None  # [from, until) epoch seconds: writes refused
    restart_at: float | None = None  # when Redis is SIGKILLed and restarted on its AOF
    down_s: float = 0.0  # how long it refuses (first half) and answers LOADING (second half)

    @classmethod
    def draw(cls, seed: int, start: float, faults: frozenset[str]) -> StorePlan:
        """Every family is drawn whichever are on, so a seed meets the same restart (say) with
        the others on or off: a failure can be replayed one family at a time."""
        rng = random.Random(f"store-{seed}")
        p_lost_request = rng.choice((0.0, 0.003, 0.01, 0.03))
        p_lost_reply = rng.choice((0.0, 0.003, 0.01, 0.03))
        # Mostly while jobs are received and submitted (the first seconds; issue 19's runs
        # struck 2 s after the first send), sometimes later, while they poll.
        oom_on = rng.random() < 0.3
        oom_at = start + rng.choice((rng.uniform(0, 5), rng.uniform(0, 40)))
        oom_s = rng.uniform(1, 10)
        restart_on = rng.random() < 0.3
        restart_at = start + rng.choice((rng.uniform(0.5, 5), rng.uniform(0.5, 40)))
        down_s = rng.uniform(0.5, 8)
        plan = cls()
        if "errors" in faults:
            plan.p_lost_request = p_lost_request
        if "timeouts" in faults:
            plan.p_lost_reply = p_lost_reply
        if "oom" in faults and oom_on:
            # A third of them from the very start: the receive hook's record is refused too.
            if random.Random(f"store-oom-{seed}").random() < 1 / 3:
                oom_at = start
            plan.oom = (oom_at, oom_at + oom_s)
        if "restart" in faults and restart_on:
            plan.restart_at, plan.down_s = restart_at, down_s
        return plan

    @property
    def any(self) -> bool:
        return bool(self.p_lost_request or self.p_lost_reply or self.oom or self.restart_at)


@dataclass
class Stats:
    """What the faults did, for a seed's report line."""

    lost_requests: int = 0
    lost_replies: int = 0
    resent: int = 0  # commands that ran, lost their reply and were sent again
    oom: int = 0
    refused: int = 0  # commands refused while the store restarted
    restarts: int = 0
    lost_s: float = 0.0  # the writes of this many seconds before the restart were lost


@dataclass
class Faults:
    """The store's state for one seed: its plan, the clock, and the last fsynced copy."""

    seed: int
    plan: StorePlan
    clock: Callable[[], float]
    client: redis.Redis  # the real one, for snapshots
    stats: Stats = field(default_factory=Stats)
    _snapshot: list[tuple[str, bytes | None, int]] = field(default_factory=list)
    _snapshot_second: float = -math.inf
    _restarted: bool = False
    # The script cache of this seed's server, kept here rather than read from the real one:
    # the simulations of other seeds (and the suite's other process) share that server, and
    # whether an EVALSHA meets NOSCRIPT decides how many commands (fault draws) follow it.
    loaded: set[str] = field(default_factory=set)
    scripts: dict[str, str] = field(default_factory=dict)  # sha -> source, as registered

    def __post_init__(self) -> None:
        self._rng = random.Random(f"store-commands-{self.seed}")
        # DUMP answers bytes: a client of its own on the same server and database.
        kwargs = self.client.connection_pool.connection_kwargs
        self._raw = redis.Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))

    # --- the clock moves ---------------------------------------------------------------------

    def next_time(self) -> float | None:
        """The next moment the simulation must stop at (a restart, the end of a window)."""
        p = self.plan
        times = []
        if p.restart_at is not None and not self._restarted:
            times.append(p.restart_at)
        if p.restart_at is not None:
            times += [p.restart_at + p.down_s / 2, p.restart_at + p.down_s]
        if p.oom is not None:
            times += list(p.oom)
        now = self.clock()
        later = [t for t in times if t > now]
        return min(later) if later else None

    def advance(self, to: float) -> None:
        """The clock is about to move to ``to``: AOF fsyncs every second, so the state as it
        is now is what a restart after the next whole second keeps."""
        p = self.plan
        if p.restart_at is None or self._restarted:
            return
        # The last whole second the AOF reaches before the restart: the clock may jump past it
        # (to a worker's restart, say), and nothing happens in between, so the state as it is
        # now is what that fsync kept.
        fsync_at = math.floor(min(to, p.restart_at))
        if fsync_at > self._snapshot_second:
            self._snapshot_second = fsync_at
            self._take_snapshot()

    def restart_pending(self) -> bool:
        return self.plan.restart_at is not None and not self._restarted

    def restart_if_due(self) -> None:
        p = self.plan
        if p.restart_at is None or self._restarted or self.clock() < p.restart_at:
            return
        self._restarted = True
        self.stats.restarts += 1
        self.stats.lost_s = round(p.restart_at - self._snapshot_second, 3)
        self._raw.flushdb()
        with self._raw.pipeline(transaction=False) as pipe:
            for key, dump, pttl in self._snapshot:
                if dump is not None:
                    pipe.restore(key, max(pttl, 0), dump, replace=True)
            pipe.execute()
        # The restarted server has no scripts: the next EVALSHA meets NOSCRIPT and loads them.
        self.loaded.clear()

    def _keys(self) -> list[bytes]:
        return list(self._raw.scan_iter(count=1000))

    def _take_snapshot(self) -> None:
        keys = self._keys()
        with self._raw.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.dump(key)
                pipe.pttl(key)
            answers = pipe.execute()
        self._snapshot = [
            (key.decode(), answers[2 * i], int(answers[2 * i + 1])) for i, key in enumerate(keys)
        ]

    # --- a command is sent -------------------------------------------------------------------

    def send(self, names: list[str], run: Callable[[], Any]) -> Any:
        """Send one command (or one pipeline of ``names``) through the faults, with redis-py's
        re-sends on top; returns its answer or raises what the client would."""
        p = self.plan
        now = self.clock()
        writes = any(n not in READS for n in names)
        if p.oom is not None and p.oom[0] <= now < p.oom[1] and writes:
            self.stats.oom += 1
            raise redis.exceptions.OutOfMemoryError(
                "command not allowed when used memory > 'maxmemory'."
            )
        tries = 1 + (RESENDS if CLIENT_RESENDS else 0)
        error: redis.RedisError | None = None
        at = now  # when this attempt is sent, after the client's backoffs
        for attempt in range(tries):
            if attempt:
                at += min(RESEND_CAP_S, self._rng.random() * RESEND_BASE_S * 2**attempt)
            if p.restart_at is not None and p.restart_at <= at < p.restart_at + p.down_s:
                self.stats.refused += 1
                if at < p.restart_at + p.down_s / 2:
                    error = redis.ConnectionError("Connection refused (simulated restart)")
                else:
                    error = redis.BusyLoadingError("Redis is loading the dataset in memory")
                continue
            draw = self._rng.random()
            if draw < p.p_lost_request:
                self.stats.lost_requests += 1
                error = redis.ConnectionError("Connection reset by peer (simulated)")
                continue
            late = draw < p.p_lost_request + p.p_lost_reply
            if late and self._rng.random() < 0.5:
                # Timed out before Redis ran it (the request sat in a full socket buffer).
                self.stats.lost_replies += 1
                error = redis.TimeoutError("Timeout writing to socket (simulated)")
                continue
            answer = run()
            if late:
                # It ran; its reply never came. A re-send runs it again.
                self.stats.lost_replies += 1
                self.stats.resent += attempt + 1 < tries
                error = redis.TimeoutError("Timeout reading from socket (simulated)")
                continue
            return answer
        assert error is not None
        raise error


class FaultyRedis(Counted):
    """A client on the real server whose every command (and pipeline) goes through ``faults``
    (those that reach the server are counted, :class:`tests.sim.truth.Counted`)."""

    def __init__(self, client: redis.Redis, faults: Faults) -> None:
        super().__init__(client)
        self.faults = faults

    def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]).upper()
        if name == "SCRIPT" and len(args) > 1:
            name = f"SCRIPT {str(args[1]).upper()}"
        real = super().execute_command
        faults = self.faults

        def run() -> Any:
            if name == "EVALSHA" and str(args[1]) not in faults.loaded:
                raise redis.exceptions.NoScriptError("No matching script. Please use EVAL.")
            try:
                answer = real(*args, **options)  # type: ignore[no-untyped-call]
            except redis.exceptions.NoScriptError:
                # This seed's server has it; the real one lost it to another seed's process.
                faults._raw.script_load(faults.scripts[str(args[1])])
                answer = real(*args, **options)  # type: ignore[no-untyped-call]
            if name == "SCRIPT LOAD":
                faults.loaded.add(str(answer))
            return answer

        return faults.send([name], run)

    def register_script(self, script: Any) -> Any:
        registered = super().register_script(script)
        source = script.decode() if isinstance(script, bytes) else str(script)
        self.faults.scripts[registered.sha] = source
        return registered

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> FaultyPipeline:
        return FaultyPipeline(self, transaction, shard_hint)


class FaultyPipeline(CountedPipeline):
    """A pipeline whose ``execute`` is one command to the faults (a MULTI/EXEC is all or none)."""

    def __init__(self, client: FaultyRedis, transaction: bool, shard_hint: Any) -> None:
        super().__init__(client, transaction, shard_hint)
        self._faults = client.faults

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        names = [str(args[0]).upper() for args, _ in self.command_stack]
        stack = list(self.command_stack)

        def run() -> list[Any]:
            self.command_stack = list(stack)
            return super(FaultyPipeline, self).execute(raise_on_error)

        try:
            result: list[Any] = self._faults.send(names, run)
        finally:
            self.reset()
        return result
