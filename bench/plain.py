"""Plain Celery's ceilings, measured in the row's own run: a worker of ``bench.plain_app`` (no
project code) on the row's Redis, in a database of its own, started for one measurement and
killed after it, so it never shares the machine with the project's worker while either is timed.

Each figure is taken the way the row takes the project's: the same drain (``rig.drain_rate``),
the same backlog, the same pool and number of slots.
"""

from __future__ import annotations

from typing import Any

from bench import plain_app
from bench.rig import Stack, drain_rate, plain_caller


def noops_per_s(stack: Stack, db: int, count: int, *, pool: str, concurrency: int) -> float:
    """Plain no-op tasks per second: a backlog of ``count`` ``plain.noop`` drained (row 2's way)."""
    worker = stack.plain_worker(db, pool=pool, concurrency=concurrency)
    try:
        with plain_caller(stack.url(db)) as c:
            backlog: list[tuple[str, list[Any], dict[str, Any]]] = [
                (plain_app.NOOP, [], {}) for _ in range(count)
            ]
            return drain_rate(
                c,
                worker,
                stack.redis(db),
                plain_app.QUEUE,
                lambda: c.send_many(backlog, plain_app.QUEUE),
                count,
                what="the plain no-op backlog to drain",
                timeout_s=60 + count / 50,
            )
    finally:
        worker.process.kill()


def chains_per_s(stack: Stack, db: int, count: int, *, warm: int, concurrency: int) -> float:
    """Plain chains of four ``plain.noop`` per second, after ``warm`` chains (row 4's way)."""
    worker = stack.plain_worker(db, concurrency=concurrency)
    try:
        with plain_caller(stack.url(db)) as c:
            client = stack.redis(db)

            def drain(n: int) -> float:
                return drain_rate(
                    c,
                    worker,
                    client,
                    plain_app.QUEUE,
                    lambda: c.noop_chains(n, task=plain_app.NOOP, queue=plain_app.QUEUE),
                    n,
                    what="the plain chains to finish",
                    timeout_s=60 + n / 20,
                )

            drain(warm)
            return drain(count)
    finally:
        worker.process.kill()
