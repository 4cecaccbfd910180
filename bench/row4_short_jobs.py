"""Row 4: short jobs end to end vs chains of four no-op tasks, both as throughput.

One worker as the Procfile runs it (prefork, 8). Each side is a backlog published while the
worker is told not to consume its first queue, then released at once:

* jobs: ``tts.submit_tts`` whose run answers pending once, then completed; each job is a submit,
  two polls (one pending, one completed), a download and a signed webhook to the receiver; the
  time ends at the last webhook;
* chains: four ``bench.noop`` as a Celery chain (each task sends the next when it succeeds); the
  time ends when their queue and the unacknowledged set are empty.

Chains run before and after the jobs and their mean is used, so a drift in the machine's load
during the row shows up as a difference between the two.

The project's chains already pay for its task events and signal handlers, so plain Celery's
chains are measured beside them: a worker of ``bench.plain_app`` (prefork, 8) drains the same
number of four-task chains the same way, on a database of its own, once before the project's
worker starts and once after it is killed. The target is judged on the project's chains as
before; jobs/s ÷ plain chains/s is for the capacity model (no target).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from bench import baselines, plain
from bench.report import Row
from bench.rig import (
    BUDGET_OFF_NOTE,
    ELEVEN,
    UPSTREAM_BUDGET_OFF,
    Caller,
    Stack,
    Worker,
    caller,
    directive,
    drain_rate,
    percentile,
)
from tasks import names

TITLE = "Short jobs end to end (one pending poll, download, webhook) ÷ chains of four no-op tasks"
TARGET = "≥ 0.3"
TARGET_RATIO = 0.3
CONCURRENCY = 8
WARM_JOBS = 16
# Redis databases: the project's worker, and plain Celery's before and after it (fresh each).
DB = 1
PLAIN_DBS = (2, 3)


@dataclass(frozen=True)
class Size:
    jobs: int
    chains: int
    interval_s: float  # the wait after the pending answer


SIZES = {
    "full": Size(jobs=600, chains=1500, interval_s=0.1),
    "mini": Size(jobs=30, chains=60, interval_s=0.1),
}


def chains_per_s(stack: Stack, c: Caller, worker: Worker, count: int) -> float:
    return drain_rate(
        c,
        worker,
        stack.redis(DB),
        baselines.NOOP_QUEUE,
        lambda: c.noop_chains(count),
        count,
        what="the chains to finish",
        timeout_s=60 + count / 20,
    )


def jobs_per_s(stack: Stack, c: Caller, worker: Worker, count: int) -> tuple[float, float]:
    """(jobs per second to the last webhook, jobs per second between the 10th and 90th)."""
    text = f"Short job {directive(pending=1, queue='none')}"
    jids = [f"r4-{n}-{uuid.uuid4().hex[:8]}" for n in range(count)]
    url = stack.receiver.url
    c.pause(worker, names.SUBMIT_QUEUE)
    c.send_many((names.SUBMIT_TTS, [text, ELEVEN], {"notify_url": url, "job_id": j}) for j in jids)
    started = time.time()
    c.resume(worker, names.SUBMIT_QUEUE)
    arrivals = sorted(stack.tally.wait(jids, timeout_s=60 + count / 5).values())
    overall = count / (arrivals[-1] - started)
    p10, p90 = percentile(arrivals, 10), percentile(arrivals, 90)
    middle = 0.8 * count / (p90 - p10) if p90 > p10 else overall
    return overall, middle


def plain_chains(stack: Stack, db: int, size: Size) -> float:
    """Plain Celery's chains/s, warmed and drained as :func:`chains_per_s` drains ours."""
    return plain.chains_per_s(stack, db, size.chains, warm=WARM_JOBS, concurrency=CONCURRENCY)


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    with Stack() as stack, caller(stack.url(DB)) as c:
        plain_before = plain_chains(stack, PLAIN_DBS[0], size)
        env = stack.env(
            stack.url(DB),
            TTS_POLL_INTERVAL=str(size.interval_s),
            TTS_POLL_MAX_INTERVAL=str(size.interval_s),
            TTS_WORKER_CONCURRENCY=str(CONCURRENCY),
            TTS_UPSTREAM_RATE=UPSTREAM_BUDGET_OFF,
        )
        worker = stack.worker(env, concurrency=CONCURRENCY)
        jobs_per_s(stack, c, worker, WARM_JOBS)
        chains_per_s(stack, c, worker, WARM_JOBS)
        before = chains_per_s(stack, c, worker, size.chains)
        jobs, jobs_middle = jobs_per_s(stack, c, worker, size.jobs)
        after = chains_per_s(stack, c, worker, size.chains)
        worker.process.kill()  # plain Celery has the machine to itself, as it had before
        plain_after = plain_chains(stack, PLAIN_DBS[1], size)
    chains = (before + after) / 2
    ratio = jobs / chains
    plain_chains_s = (plain_before + plain_after) / 2
    plain_ratio = jobs / plain_chains_s
    details = [
        f"One worker, prefork × {CONCURRENCY}. {size.jobs} jobs, each: submit (202), a pending"
        f" answer, a wait of `TTS_POLL_INTERVAL = TTS_POLL_MAX_INTERVAL = {size.interval_s:g}`"
        " s (parked in `tts:wait`, released by the 0.2 s tick), the completed answer, a download"
        " of the 12.8 kB WAV into the local audio directory, and a signed webhook: 5 tasks and 4"
        f" HTTP calls per job. {size.chains} chains of four `bench.noop` before and after. "
        + BUDGET_OFF_NOTE,
        "",
        f"Plain Celery beside it (no target; for the capacity model): a worker of"
        f" `bench/plain_app.py` (no project code: no task events, no signal handlers; acks late,"
        f" as ours), prefork × {CONCURRENCY}, drained {size.chains} chains of four `plain.noop`"
        f" (after {WARM_JOBS} to warm up) on a database of its own, with no worker of ours"
        " running: once before the project's worker started and once after it was killed.",
        "",
        "| side | per second | tasks per second |",
        "|---|---|---|",
        f"| plain Celery: chains of 4 no-ops, first | {plain_before:.0f} chains"
        f" | {4 * plain_before:.0f} |",
        f"| chains of 4 no-ops, before the jobs | {before:.0f} chains | {4 * before:.0f} |",
        f"| short jobs, to the last webhook | {jobs:.1f} jobs | {5 * jobs:.0f} |",
        f"| short jobs, 10th to 90th webhook | {jobs_middle:.1f} jobs | {5 * jobs_middle:.0f} |",
        f"| chains of 4 no-ops, after the jobs | {after:.0f} chains | {4 * after:.0f} |",
        f"| plain Celery: chains of 4 no-ops, last | {plain_after:.0f} chains"
        f" | {4 * plain_after:.0f} |",
        "",
        f"Ratio = jobs/s ÷ mean chains/s = {jobs:.1f} ÷ {chains:.0f} = {ratio:.2f}"
        f" (steady middle of the jobs: {jobs_middle / chains:.2f}).",
        "",
        f"Beside plain Celery: short jobs/s ÷ plain 4-task chains/s = {jobs:.1f} ÷"
        f" {plain_chains_s:.0f} = **{plain_ratio:.2f}** (steady middle:"
        f" {jobs_middle / plain_chains_s:.2f}); the project's own chains run at"
        f" {chains / plain_chains_s:.2f} of plain Celery's ({chains:.0f} ÷ {plain_chains_s:.0f}).",
    ]
    return Row(
        number=4,
        title=TITLE,
        target=TARGET,
        figure=(
            f"{ratio:.2f} ({jobs:.0f} jobs/s vs {chains:.0f} chains/s); vs plain Celery's chains"
            f" {plain_ratio:.2f} ({plain_chains_s:.0f}/s, no target)"
        ),
        passed=ratio >= TARGET_RATIO,
        details=details,
        values={
            "ratio": ratio,
            "jobs_per_s": jobs,
            "jobs_per_s_middle": jobs_middle,
            "chains_per_s_before": before,
            "chains_per_s_after": after,
            "plain_chains_per_s": plain_chains_s,
            "plain_chains_per_s_before": plain_before,
            "plain_chains_per_s_after": plain_after,
            "plain_ratio": plain_ratio,
            "plain_ratio_middle": jobs_middle / plain_chains_s,
            "chains_vs_plain": chains / plain_chains_s,
            "upstream_rate": UPSTREAM_BUDGET_OFF,
        },
    )
