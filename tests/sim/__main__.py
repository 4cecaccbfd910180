"""Replay seeds: ``python -m tests.sim --seed 1234`` (or ``--seeds 0-1999``), on a private
Redis of its own (workers/embedded_redis.py), printing each seed's figures and violations."""

from __future__ import annotations

import argparse
import sys
import time

import redis

from tests.sim import run, store
from tests.sim.run import run_seed
from workers.embedded_redis import EmbeddedRedis


def _seeds(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seed", type=int, help="one seed")
    parser.add_argument("--seeds", type=_seeds, help="a range, e.g. 0-1999")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line for every seed")
    parser.add_argument("--trace", action="store_true", help="print every side effect")
    parser.add_argument(
        "--store-faults",
        type=store.fault_families,
        default=None,
        help="the job store's faults: all, none, or some of errors,timeouts,oom,restart "
        "(default: tests/sim/store.py STORE_FAULTS, or SIM_STORE_FAULTS)",
    )
    parser.add_argument(
        "--store-errors-acked",
        action="store_true",
        help="a task that raised a job-store error is acknowledged, as plain Celery does (run.py "
        "STORE_ERROR_RETRIES off: the behaviour before issue 19)",
    )
    parser.add_argument(
        "--client-resends",
        action="store_true",
        help="the worker's Redis client re-sends a failed command, as redis-py does by default "
        "(store.py CLIENT_RESENDS: the behaviour before issue 19)",
    )
    args = parser.parse_args(argv)
    if args.store_errors_acked:
        run.STORE_ERROR_RETRIES = False
    if args.client_resends:
        store.CLIENT_RESENDS = True
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else args.seeds or range(100)
    server = EmbeddedRedis().start()
    failed = reused = 0
    started = time.monotonic()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        for seed in seeds:
            trace: list[str] | None = [] if args.trace else None
            report = run_seed(seed, client, trace=trace, store_faults_on=args.store_faults)
            for line in trace or []:
                print(line)
            if report.violations or args.verbose or args.seed is not None:
                print(
                    f"seed {seed}: {report.jobs} jobs, {report.executions} executions, "
                    f"{report.sim_s:.0f} s simulated, crashes {dict(report.crashes)}, "
                    f"cancels {report.cancels}, deferred {report.deferred}, "
                    f"reused {report.reused}, "
                    f"outcomes {dict(report.outcomes)}"
                )
                if report.store is not None:
                    print(f"  job store: {report.store}, {report.store_errors} tasks failed on it")
            for line in report.violations:
                print(f"  VIOLATION {line}")
            failed += bool(report.violations)
            reused += report.reused
    finally:
        server.stop()
    elapsed_s = time.monotonic() - started
    print(f"{len(seeds)} seeds, {failed} failed, {elapsed_s:.1f} s ({reused} jobs reused)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
