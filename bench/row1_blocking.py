"""Row 1: jobs that each take 2 s upstream, one worker with 4 slots: the seed loop vs the project.

Both sides run in one worker (prefork, 4 processes), one after the other, and are timed from the
first message published to the last webhook received. The baseline task submits, runs the seed
document's ``wait_for_tts`` (``time.sleep(3)`` between polls, in the task), downloads and POSTs
a webhook; the project gets ``tts.submit_tts`` messages and does the same through its pipeline.
The upstream (the simulator) finishes each job ``upstream_s`` after its submit.

The project runs twice: with no ``queuePosition`` in the pending answers, and with the
simulator's default position 3 (the README's demo shows 3, 2, 1, 0), from which
``tasks/pacing/schedule.py`` places the next poll.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass

from bench import baselines
from bench.report import Row
from bench.rig import ELEVEN, Caller, Stack, caller, directive, status_calls
from tasks import names

TITLE = "40 jobs × 2 s upstream, one worker with 4 slots: project vs the seed's blocking loop"
TARGET = "project ≥ 8× faster"
TARGET_X = 8.0
# Untimed jobs of each kind first, so imports, sessions and connections are warm.
WARM_JOBS = 4


@dataclass(frozen=True)
class Size:
    jobs: int
    upstream_s: float
    seed_delay_s: float  # the seed's delay_s (3 in the document)
    poll_interval_s: float  # TTS_POLL_INTERVAL
    poll_max_interval_s: float  # TTS_POLL_MAX_INTERVAL
    slots: int = 4


SIZES = {
    # The seed's 3 s and the project's default 3 s / 30 s.
    "full": Size(
        jobs=40, upstream_s=2.0, seed_delay_s=3.0, poll_interval_s=3, poll_max_interval_s=30
    ),
    # The same shape, ten times faster.
    "mini": Size(
        jobs=8, upstream_s=0.2, seed_delay_s=0.3, poll_interval_s=0.3, poll_max_interval_s=3
    ),
}


@dataclass(frozen=True)
class Batch:
    elapsed_s: float
    calls_per_job: float
    p50_job_s: float  # from the first publish to each job's webhook


def batch(stack: Stack, c: Caller, kind: str, size: Size, queue: int | str) -> Batch:
    """Publish ``size.jobs`` jobs of ``kind`` ("blocking" or "project"); time them to the end."""
    sim = directive(pending=0, pending_s=size.upstream_s, queue=queue)
    jids = [f"r1-{kind}-{n}-{uuid.uuid4().hex[:8]}" for n in range(size.jobs)]
    url = stack.receiver.url
    started = time.time()
    if kind == "blocking":
        c.send_many(
            (baselines.BLOCKING_JOB, [f"Row 1 {j} {sim}", ELEVEN, url, j, size.seed_delay_s], {})
            for j in jids
        )
    else:
        c.send_many(
            (names.SUBMIT_TTS, [f"Row 1 {j} {sim}", ELEVEN], {"notify_url": url, "job_id": j})
            for j in jids
        )
    rounds = -(-size.jobs // size.slots)
    timeout_s = 60 + 3 * rounds * (size.seed_delay_s + size.upstream_s + size.poll_max_interval_s)
    arrivals = stack.tally.wait(jids, timeout_s=timeout_s)
    run_ids = [stack.tally.run_ids[j] for j in jids]
    calls = status_calls(stack.sim, run_ids)
    return Batch(
        elapsed_s=max(arrivals.values()) - started,
        calls_per_job=sum(calls.values()) / len(jids),
        p50_job_s=statistics.median(at - started for at in arrivals.values()),
    )


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    env_overrides = {
        "TTS_POLL_INTERVAL": str(size.poll_interval_s),
        "TTS_POLL_MAX_INTERVAL": str(size.poll_max_interval_s),
        "TTS_WORKER_CONCURRENCY": str(size.slots),
        # The row compares how slots are used, against a simulator with no call limit, and the
        # seed's loop has no budget: the project's is off too (row 6 measures it).
        "TTS_UPSTREAM_RATE": "0",
    }
    with Stack() as stack, caller(stack.url()) as c:
        env = stack.env(**env_overrides)
        stack.worker(env, concurrency=size.slots)
        warm = Size(WARM_JOBS, 0.0, 0.0, 0.0, 0.0, size.slots)
        batch(stack, c, "blocking", warm, "none")
        batch(stack, c, "project", warm, "none")
        blocking = batch(stack, c, "blocking", size, "none")
        project = batch(stack, c, "project", size, "none")
        queued = batch(stack, c, "project", size, 3)

    speedup = blocking.elapsed_s / project.elapsed_s
    queued_speedup = blocking.elapsed_s / queued.elapsed_s
    queued_verdict = "PASS" if queued_speedup >= TARGET_X else "FAIL"
    settings = ", ".join(f"`{k}={v}`" for k, v in env_overrides.items())
    details = [
        f"{size.jobs} jobs; the simulator completes each {size.upstream_s:g} s after its submit.",
        f"One worker, `--pool prefork --concurrency {size.slots}`. Project settings: {settings},",
        "waiting polls parked in `tts:wait` (released by a worker's thread every 0.2 s),",
        "other settings at their defaults. Baseline: the seed's",
        f"`wait_for_tts` with `delay_s={size.seed_delay_s:g}` inside a task, plus submit, download",
        "and an (unsigned) webhook POST in the same task.",
        "",
        "| run | all webhooks in | median job | status calls / job | speed-up vs baseline |",
        "|---|---|---|---|---|",
        _line("baseline: seed loop in a task", blocking, None),
        _line("project, no queue position", project, speedup),
        _line("project, queuePosition 3, 2, …", queued, queued_speedup),
        "",
        f"With queue positions the project is {queued_speedup:.1f}× faster ({queued_verdict}"
        " against the 8× target): the same jobs, but each pending answer carries a queue"
        " position (3, then 2, 1, 0), and `tasks/pacing/schedule.py` places the next poll from it.",
        f"Each project job makes {project.calls_per_job:.2f} status calls, placed by"
        " `tasks/pacing/schedule.py` from `TTS_POLL_INTERVAL`; a job's time is those waits, plus"
        " up to one 0.2 s tick of the releaser for each, plus the download and the webhook.",
    ]
    return Row(
        number=1,
        title=TITLE,
        target=TARGET,
        figure=(
            f"{speedup:.1f}× ({blocking.elapsed_s:.1f} s vs {project.elapsed_s:.1f} s); "
            f"with queue positions {queued_speedup:.1f}× ({queued_verdict})"
        ),
        passed=speedup >= TARGET_X,
        details=details,
        values={
            "speedup": speedup,
            "queued_speedup": queued_speedup,
            "blocking_s": blocking.elapsed_s,
            "project_s": project.elapsed_s,
            "queued_s": queued.elapsed_s,
            "project_calls_per_job": project.calls_per_job,
            "blocking_calls_per_job": blocking.calls_per_job,
        },
    )


def _line(label: str, b: Batch, speedup: float | None) -> str:
    ratio = "—" if speedup is None else f"{speedup:.1f}×"
    return (
        f"| {label} | {b.elapsed_s:.2f} s | {b.p50_job_s:.2f} s | {b.calls_per_job:.2f} | {ratio} |"
    )
