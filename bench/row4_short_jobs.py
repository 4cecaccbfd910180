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
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from bench import baselines
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
# The Redis database of the row's worker.
DB = 1


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


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    with Stack() as stack, caller(stack.url(DB)) as c:
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
    chains = (before + after) / 2
    ratio = jobs / chains
    details = [
        f"One worker, prefork × {CONCURRENCY}. {size.jobs} jobs, each: submit (202), a pending"
        f" answer, a wait of `TTS_POLL_INTERVAL = TTS_POLL_MAX_INTERVAL = {size.interval_s:g}`"
        " s (parked in `tts:wait`, released by the 0.2 s tick), the completed answer, a download"
        " of the 12.8 kB WAV into the local audio directory, and a signed webhook: 5 tasks and 4"
        f" HTTP calls per job. {size.chains} chains of four `bench.noop` before and after. "
        + BUDGET_OFF_NOTE,
        "",
        "| side | per second | tasks per second |",
        "|---|---|---|",
        f"| chains of 4 no-ops, before the jobs | {before:.0f} chains | {4 * before:.0f} |",
        f"| short jobs, to the last webhook | {jobs:.1f} jobs | {5 * jobs:.0f} |",
        f"| short jobs, 10th to 90th webhook | {jobs_middle:.1f} jobs | {5 * jobs_middle:.0f} |",
        f"| chains of 4 no-ops, after the jobs | {after:.0f} chains | {4 * after:.0f} |",
        "",
        f"Ratio = jobs/s ÷ mean chains/s = {jobs:.1f} ÷ {chains:.0f} = {ratio:.2f}"
        f" (steady middle of the jobs: {jobs_middle / chains:.2f}).",
    ]
    return Row(
        number=4,
        title=TITLE,
        target=TARGET,
        figure=f"{ratio:.2f} ({jobs:.0f} jobs/s vs {chains:.0f} chains/s)",
        passed=ratio >= TARGET_RATIO,
        details=details,
        values={
            "ratio": ratio,
            "jobs_per_s": jobs,
            "jobs_per_s_middle": jobs_middle,
            "chains_per_s_before": before,
            "chains_per_s_after": after,
            "upstream_rate": UPSTREAM_BUDGET_OFF,
        },
    )
