"""The deterministic simulation in the test suite: thousands of seeds, and the cases that
show it catches what it is for (each fails with the bug it is named after put back)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import pytest
import redis

from tasks import steps
from tasks.adapters import received
from tasks.config.settings import Settings
from tasks.nanogpt import validation
from tasks.record.jobs import Job
from tasks.steps import accept
from tests.sim.run import SIM_ENV, Report, Sim, run_seed
from tests.sim.world import Plan
from workers.embedded_redis import EmbeddedRedis

# Seeds per run of the suite (README, "Testing"); SIM_SEEDS=20000 for a longer hunt.
SEEDS = int(os.environ.get("SIM_SEEDS", "2000"))
PROCESSES = 2  # the machine's cores


def _client(port: int, db: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, db=db, decode_responses=True)


def _chunk(port: int, db: int, seeds: list[int]) -> list[tuple[int, list[str]]]:
    client = _client(port, db)
    failed = []
    for seed in seeds:
        report = run_seed(seed, client)
        if report.violations:
            failed.append((seed, report.violations))
    return failed


def test_seeds_keep_every_promise(sim_server: EmbeddedRedis) -> None:
    """Each caller request accepted upstream at most once; one outcome, one webhook-id per job;
    no status call, POST or store after the outcome (some callers cancel); no job open at the
    end; no key without a TTL."""
    started = time.monotonic()
    chunks = [list(range(SEEDS))[i::PROCESSES] for i in range(PROCESSES)]
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        futures = [pool.submit(_chunk, sim_server.port, i, chunk) for i, chunk in enumerate(chunks)]
        failed = sorted(f for future in futures for f in future.result())
    elapsed_s = time.monotonic() - started
    print(f"\nsimulation: {SEEDS} seeds in {elapsed_s:.1f} s on {PROCESSES} processes")
    lines = [
        f"seed {seed}: {'; '.join(violations)}\n  replay: python -m tests.sim --seed {seed}"
        for seed, violations in failed[:10]
    ]
    assert not failed, f"{len(failed)} of {SEEDS} seeds broke a promise:\n" + "\n".join(lines)


@pytest.fixture
def sim_redis(sim_server: EmbeddedRedis) -> redis.Redis:
    return _client(sim_server.port, PROCESSES)


def _one_submit_meeting_a_503(sim: Sim) -> None:
    """The README's default: no job_id; the first POST gets a 503; nothing else goes wrong."""
    sim.plans[:] = [Plan(0, sim.new_task_id(), submit_faults=["503"])]
    sim.knobs.p_crash = sim.knobs.p_duplicate = sim.knobs.p_publish_fail = 0.0


def _old_identity(d: steps.Delivery, job_id: object) -> str:
    """The bug: a fresh uuid on every execution when the caller leaves job_id out."""
    return str(uuid.uuid4()) if job_id is None else validation.job_id(job_id)


def test_submit_without_job_id_meeting_a_503_is_billed_once(sim_redis: redis.Redis) -> None:
    report = run_seed(1, sim_redis, shape=_one_submit_meeting_a_503)
    assert report.violations == []
    assert dict(report.outcomes) == {"completed": 1}


def test_the_old_identity_bug_is_caught(
    sim_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept, "job_identity", _old_identity)
    report = run_seed(1, sim_redis, shape=_one_submit_meeting_a_503)
    assert any("accepted its request" in v for v in report.violations), report.violations


def _worker_killed_holding_prefetched_messages(sim: Sim) -> None:
    """One worker prefetches eight submits and is SIGKILLed at its very first side effect:
    seven messages it never started sit in unacked, with no job record but what the receive
    hook made."""
    sim.plans[:] = [Plan(i, sim.new_task_id()) for i in range(8)]
    k = sim.knobs
    k.workers, k.prefetch, k.concurrency = 1, 8, 1
    k.p_crash = k.p_duplicate = k.p_publish_fail = 0.0
    k.kill_at_event = 1


def test_prefetched_messages_of_a_killed_worker_are_not_lost(sim_redis: redis.Redis) -> None:
    report = run_seed(2, sim_redis, shape=_worker_killed_holding_prefetched_messages)
    assert report.crashes["worker"] == 1
    assert report.violations == []
    assert sum(report.outcomes.values()) == 8


def test_losing_prefetched_messages_is_caught(
    sim_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(received, "on_received", lambda *a, **k: None)
    report = run_seed(2, sim_redis, shape=_worker_killed_holding_prefetched_messages)
    assert report.crashes["worker"] == 1
    lost = [v for v in report.violations if "no outcome by the end" in v]
    assert len(lost) >= 7, report.violations


def _one_job_cancelled_while_it_polls(sim: Sim) -> None:
    """Pending for six polls (3 s apart), each waiting as a countdown message in the broker
    (``TTS_POLL_WAIT=broker``), so one is there when the caller cancels, 8 s in."""
    sim.plans[:] = [Plan(0, sim.new_task_id(), pending_polls=6, cancel_after_s=8.0)]
    sim.knobs.p_crash = sim.knobs.p_duplicate = sim.knobs.p_publish_fail = 0.0
    broker = Settings(**{**SIM_ENV, "TTS_POLL_WAIT": "broker"})  # type: ignore[arg-type]
    sim.ctx = dataclasses.replace(sim.ctx, settings=broker)


# Seeds for the cancel cases: in some the cancel lands while the next poll waits in the broker,
# in others while a poll is in flight (which then finishes its one call); together they hold both.
CANCEL_SEEDS = range(3, 11)


def test_a_cancel_ends_a_polling_job_and_its_polls(sim_redis: redis.Redis) -> None:
    for seed in CANCEL_SEEDS:
        report = run_seed(seed, sim_redis, shape=_one_job_cancelled_while_it_polls)
        assert report.violations == [], seed
        assert dict(report.outcomes) == {"CANCELLED": 1}, seed


def _polls_that_ignore_their_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: a poll message acts on any polling-or-ended job it finds."""
    monkeypatch.setattr(Job, "holds", lambda self, token, seq: True)


def test_polls_after_a_cancel_are_caught(
    sim_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _polls_that_ignore_their_lease(monkeypatch)
    reports = [
        run_seed(seed, sim_redis, shape=_one_job_cancelled_while_it_polls) for seed in CANCEL_SEEDS
    ]
    caught = [
        r for r in reports if any("status calls after its outcome" in v for v in r.violations)
    ]
    assert caught, reports


def test_a_seed_replays_the_same(sim_redis: redis.Redis) -> None:
    first, second = (run_seed(7, sim_redis) for _ in range(2))

    def figures(r: Report) -> tuple[object, ...]:
        return (r.executions, round(r.sim_s, 6), dict(r.crashes), dict(r.outcomes))

    assert figures(first) == figures(second)
