"""What the simulation reads of the job store between two steps, without asking Redis again
while nothing can have changed it.

The scheduler asks the same questions at almost every turn of its loop (has every job ended?
when is the next parked job due?), and many turns write nothing to Redis in between: these
reads were 43 % of a seed's Redis commands (seeds 0-49). The store changes only through the
workers' client (the job store's, the budget's, the releaser's commands), a restart of the store
(tests/sim/store.py) or the seed's FLUSHDB, so :class:`Counted` counts the workers' commands
that may write, and :class:`Truth` keeps its answers while that count and the restarts stand
still (anything else that writes must call :meth:`Truth.forget`). A record's TTL is an hour of
real time and the parked sets have none, so nothing it keeps expires before its re-use. The
answers are those Redis gave: the records as ``JobStore.get`` reads them, the parked sets'
scores as Redis holds them (counted here as ZCOUNT would).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

from tasks.record.jobs import DUE_KEY, WAIT_KEY, Job, JobStore

# Commands that only read: they leave every key as it was (and an OOM does not refuse them,
# tests/sim/store.py). Anything else, a script included, counts as a write.
READS = frozenset(
    {
        "DUMP",
        "EXISTS",
        "GET",
        "HGET",
        "HGETALL",
        "HMGET",
        "LRANGE",
        "PTTL",
        "SCAN",
        "SCRIPT LOAD",
        "TTL",
        "ZCARD",
        "ZCOUNT",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "ZSCORE",
    }
)


def _writes(names: list[str]) -> bool:
    return any(name.upper() not in READS for name in names)


class Counted(redis.Redis):
    """A client on ``client``'s server that counts what it sends that may write: ``writes``
    goes up by one for each such command and each pipeline holding one. It holds one
    connection of ``client``'s pool until :meth:`close` (pipelines take theirs from the pool)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(connection_pool=client.connection_pool, single_connection_client=True)
        self.writes = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.writes += _writes([str(args[0])])
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return CountedPipeline(self, transaction, shard_hint)


class CountedPipeline(Pipeline):
    def __init__(self, client: Counted, transaction: bool, shard_hint: Any) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._counted = client

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self._counted.writes += _writes([str(args[0]) for args, _ in self.command_stack])
        return super().execute(raise_on_error)


class Truth:
    """The records and parked sets, read through the simulation's own client (never the
    workers', so no fault strikes these reads) and kept while ``version()`` is unchanged."""

    def __init__(self, jobs: JobStore, version: Callable[[], int]) -> None:
        self._jobs = jobs
        self._client: redis.Redis = jobs.redis
        self._version = version
        self._seen = -1
        self._records: dict[str, Job | None] = {}
        self._parked: dict[str, list[tuple[str, float]]] = {}

    def key(self, job_id: str) -> str:
        return self._jobs.key(job_id)

    def forget(self) -> None:
        """Read afresh next time (the seed's FLUSHDB, say)."""
        self._seen = -1

    def _current(self) -> None:
        version = self._version()
        if version != self._seen:
            self._seen = version
            self._records.clear()
            self._parked.clear()

    def get(self, job_id: str) -> Job | None:
        """The job's record, as ``JobStore.get`` reads it."""
        self._current()
        if job_id not in self._records:
            self._records[job_id] = self._jobs.get(job_id)
        return self._records[job_id]

    def _set(self, key: str) -> list[tuple[str, float]]:
        self._current()
        if key not in self._parked:
            self._parked[key] = self._client.zrange(key, 0, -1, withscores=True)
        return self._parked[key]

    def first_waiting(self) -> float | None:
        """The lowest score in the waiting set (``ZRANGE 0 0 WITHSCORES``), or None."""
        members = self._set(WAIT_KEY)
        return members[0][1] if members else None

    def waiting_due(self, now: float) -> int:
        """Members of the waiting set scored at most ``now`` (``ZCOUNT -inf now``)."""
        return sum(1 for _, score in self._set(WAIT_KEY) if score <= now)

    def watched(self, job_id: str) -> bool:
        """Whether the job is in the reconciler's due set or the waiting set."""
        return any(member == job_id for key in (DUE_KEY, WAIT_KEY) for member, _ in self._set(key))
