"""Row 8: status calls per job against NanoGPT's documented fixed 3 s loop, on 4-16 s jobs.

The baseline is the loop of NanoGPT's docs, as written (``reference/tts-status-seed.txt``,
``wait_for_tts``): a status call right after the submit, then one every 3 s (``time.sleep(3)``
between answers) until the audio URL comes. The bench runs it in one thread per job, against a
simulator of its own. The project runs the same jobs through one worker (prefork × 8) with the
production defaults (``TTS_POLL_INTERVAL=3``, ``TTS_POLL_MAX_INTERVAL=30``, the budget at 20/s,
which this light load never reaches), against another simulator, starting from a fleet that has
learned nothing: the aim at completion (``tasks/pacing/aim.py``) begins once ten jobs completed.

The workload (fixed seed): ``jobs`` jobs arriving as a Poisson stream, each generating uniformly
4-16 s, with enough upstream generators that none queues. Per lane: status calls per job (the
simulator counts them), and the lag from each generation's end to the status answer that said
``completed`` (the simulator's own times, p50 and p95): the one measure both lanes have. The
project's completion → webhook (download and webhook included) is shown beside it.

Target: the project makes at most 0.6 of the loop's status calls per job, at a p95 lag at most
1.1 of the loop's.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field

import requests

from bench.report import Row
from bench.rig import ELEVEN, BenchError, Caller, Stack, directive, percentile
from tasks import names
from workers.simulator import Simulator

TITLE = "Status calls per job ÷ NanoGPT's documented fixed 3 s loop, on 4-16 s jobs"
TARGET = "≤ 0.6 of the loop's calls at ≤ 1.1 of its p95 lag"
MAX_CALLS_RATIO = 0.6
MAX_LAG_RATIO = 1.1
DOCS_DELAY_S = 3.0  # wait_for_tts's delay_s
DOCS_MAX_ATTEMPTS = 60  # wait_for_tts's max_attempts
HTTP_TIMEOUT_S = 30.0  # the docs' requests timeout


@dataclass(frozen=True)
class Size:
    jobs: int
    mean_gap_s: float
    gen_s: tuple[float, float]
    slots: int
    seed: int = 8


SIZES = {
    "full": Size(jobs=80, mean_gap_s=1.5, gen_s=(4.0, 16.0), slots=64),
    "mini": Size(jobs=6, mean_gap_s=0.2, gen_s=(0.2, 0.6), slots=8),
}


@dataclass
class Lane:
    label: str
    sim: Simulator
    run_ids: list[str] = field(default_factory=list)
    calls_per_job: float = 0.0
    lags_s: list[float] = field(default_factory=list)  # generation end → "completed" answer
    webhook_s: list[float] = field(default_factory=list)  # generation end → webhook (project)


def workload(size: Size) -> list[tuple[float, float]]:
    """(arrival, generation seconds) per job."""
    rng = random.Random(size.seed)
    at, jobs = 0.0, []
    for _ in range(size.jobs):
        jobs.append((at, rng.uniform(*size.gen_s)))
        at += rng.expovariate(1 / size.mean_gap_s)
    return jobs


def docs_loop(sim: Simulator, text: str, out: list[str], delay_s: float = DOCS_DELAY_S) -> None:
    """Submit ``text`` and poll as the docs' ``wait_for_tts`` does (the run id goes to ``out``)."""
    headers = {"x-api-key": "x"}
    with requests.Session() as http:
        ticket = http.post(
            f"{sim.base_url}/tts",
            json={"text": text, "model": ELEVEN},
            headers=headers,
            timeout=HTTP_TIMEOUT_S,
        ).json()
        run_id = ticket["runId"]
        out.append(run_id)
        for _ in range(DOCS_MAX_ATTEMPTS):
            data = http.get(
                f"{sim.base_url}/tts/status",
                params={"runId": run_id, "model": ELEVEN},
                headers=headers,
                timeout=HTTP_TIMEOUT_S,
            ).json()
            if data.get("status") == "completed" and data.get("audioUrl"):
                return
            if data.get("status") == "error":
                raise BenchError(f"docs loop: run {run_id} failed: {data}")
            time.sleep(delay_s)
        raise BenchError(f"docs loop: run {run_id} still pending after {DOCS_MAX_ATTEMPTS} polls")


def _lags(lane: Lane) -> None:
    """Per run: generation end → the first status answer after it (the one that said so)."""
    calls = 0
    for run_id in lane.run_ids:
        polls = [r.at for r in lane.sim.status_polls(run_id) if not r.limited]
        calls += len(polls)
        ended = lane.sim.finished_at(run_id)
        after = [at for at in polls if ended is not None and at >= ended]
        if ended is None or not after:
            raise BenchError(f"{lane.label}: run {run_id} has no status answer after its end")
        lane.lags_s.append(min(after) - ended)
    lane.calls_per_job = calls / len(lane.run_ids)


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    work = workload(size)
    with (
        Stack() as stack,
        Simulator(api_key="x", upstream_slots=size.slots) as docs_sim,
        Simulator(api_key="x", upstream_slots=size.slots) as project_sim,
    ):
        docs, project = Lane("docs loop", docs_sim), Lane("project", project_sim)
        env = stack.env(stack.url(1), NANOGPT_BASE_URL=project_sim.base_url, NANOGPT_API_KEY="x")
        stack.worker(env)
        tag = uuid.uuid4().hex[:6]
        jids: list[str] = []
        threads: list[threading.Thread] = []
        with Caller(stack.url(1)) as c:
            started = time.monotonic()
            for n, (arrival_s, gen_s) in enumerate(work):
                time.sleep(max(0.0, started + arrival_s - time.monotonic()))
                text = f"Row 8 job {n} {directive(gen_s=round(gen_s, 3))}"
                loop = threading.Thread(
                    target=docs_loop, args=(docs_sim, text, docs.run_ids), daemon=True
                )
                loop.start()
                threads.append(loop)
                jid = f"r8-{tag}-{n}"
                jids.append(jid)
                c.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=stack.receiver.url, job_id=jid)
            arrivals = stack.tally.wait(jids, timeout_s=120 + size.gen_s[1] * 4)
        for loop in threads:
            loop.join(timeout=DOCS_MAX_ATTEMPTS * DOCS_DELAY_S)
        if len(docs.run_ids) < len(work):
            raise BenchError(f"docs loop: {len(work) - len(docs.run_ids)} jobs not submitted")
        project.run_ids = [stack.tally.run_ids[jid] for jid in jids]
        for jid, run_id in zip(jids, project.run_ids, strict=True):
            ended = project_sim.finished_at(run_id)
            if ended is None:
                raise BenchError(f"project: run {run_id} has no completion time")
            project.webhook_s.append(arrivals[jid] - ended)
        _lags(docs)
        _lags(project)
    calls_ratio = project.calls_per_job / docs.calls_per_job
    lag_ratio = percentile(project.lags_s, 95) / percentile(docs.lags_s, 95)
    rows = [
        "| lane | status calls / job | end→completed answer p50 | p95 | max |"
        " end→webhook p50 | p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for lane in (docs, project):
        hook = (
            f"{statistics.median(lane.webhook_s):.2f} s | {percentile(lane.webhook_s, 95):.2f} s"
            if lane.webhook_s
            else "— | —"
        )
        rows.append(
            f"| {lane.label} | {lane.calls_per_job:.2f} | {statistics.median(lane.lags_s):.2f} s"
            f" | {percentile(lane.lags_s, 95):.2f} s | {max(lane.lags_s):.2f} s | {hook} |"
        )
    gens = [g for _, g in work]
    details = [
        f"{size.jobs} jobs, one every {size.mean_gap_s:g} s on average, generation"
        f" {min(gens):.1f}-{max(gens):.1f} s (uniform over {size.gen_s[0]:g}-{size.gen_s[1]:g} s),"
        f" {size.slots} upstream generators (no queue). The docs' loop in a thread per job; the"
        " project through one worker (prefork × 8) with production defaults, its fleet learning"
        " from nothing at the start.",
        "",
        *rows,
        "",
        f"Calls: {project.calls_per_job:.2f} ÷ {docs.calls_per_job:.2f} = {calls_ratio:.2f}; p95"
        f" lag: {percentile(project.lags_s, 95):.2f} s ÷ {percentile(docs.lags_s, 95):.2f} s ="
        f" {lag_ratio:.2f}.",
    ]
    passed = calls_ratio <= MAX_CALLS_RATIO and lag_ratio <= MAX_LAG_RATIO
    return Row(
        number=8,
        title=TITLE,
        target=TARGET,
        figure=(
            f"{calls_ratio:.2f} of the calls ({project.calls_per_job:.2f} vs"
            f" {docs.calls_per_job:.2f}/job) at {lag_ratio:.2f} of its p95 lag"
            f" ({percentile(project.lags_s, 95):.2f} s vs {percentile(docs.lags_s, 95):.2f} s)"
        ),
        passed=passed if size_name == "full" else None,
        details=details,
        values={
            "calls_ratio": calls_ratio,
            "lag_ratio": lag_ratio,
            "docs_calls_per_job": docs.calls_per_job,
            "project_calls_per_job": project.calls_per_job,
            "docs_p95_s": percentile(docs.lags_s, 95),
            "project_p95_s": percentile(project.lags_s, 95),
            "project_webhook_p95_s": percentile(project.webhook_s, 95),
        },
    )
