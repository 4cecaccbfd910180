"""Row 11: identical requests served once (issue 22's Done-when, "Reuse on").

One worker as the Procfile runs it (prefork × 8), production defaults otherwise, against the
simulator. The workload: 10 identical submits at once (same text, model and voice; the
simulator generates each run for ``gen_s`` seconds), then, once the first webhook came, 20 more
of the same, and one of the same text with another voice. Two lanes, one after the other, each
with its own simulator and Redis database:

* ``reuse``: ``TTS_REUSE_TTL=600``;
* ``off``: ``TTS_REUSE_TTL=0`` (the default), every submit its own POST (the issue's "before").

Per lane: POSTs the simulator answered for the identical request and for the other voice,
completed webhooks, distinct audio files (and sha256) among the identical ones, and the time
from send to webhook (p50, p95) of the 10 sent at once and of the 20 sent later.
Target (the issue): with reuse, one POST and 30 completed webhooks with the same audio for the
identical requests, and one POST of its own for the other voice.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.report import Row
from bench.rig import ELEVEN, BenchError, Caller, Stack, directive, percentile
from tasks import names
from workers.simulator import Simulator

TITLE = "Reuse on: 30 identical submits (10 at once, 20 after), another voice: POSTs, webhooks"
TARGET = "1 POST and 30 completed webhooks with one audio; the other voice 1 POST"
REUSE_TTL_S = 600
FIRST, LATER = 10, 20


@dataclass(frozen=True)
class Size:
    gen_s: float


SIZES = {"full": Size(gen_s=6.0), "mini": Size(gen_s=1.0)}


@dataclass
class Lane:
    label: str
    ttl_s: int
    sim: Simulator
    posts_same: int = 0
    posts_other: int = 0
    completed: int = 0
    files: int = 0
    digests: int = 0
    first_s: list[float] = field(default_factory=list)
    later_s: list[float] = field(default_factory=list)


def _p(values: list[float], q: int) -> float:
    return percentile(values, q) if values else float("nan")


def _audio(stack: Stack, db: int, jid: str) -> dict[str, Any]:
    raw = stack.redis(db).hget(f"tts:job:{jid}", "outcome")
    outcome = json.loads(str(raw)) if raw else {}
    return outcome.get("audio") or {}


def _run_lane(stack: Stack, lane: Lane, db: int, size: Size) -> None:
    env = stack.env(
        stack.url(db),
        NANOGPT_BASE_URL=lane.sim.base_url,
        NANOGPT_API_KEY="x",
        TTS_REUSE_TTL=str(lane.ttl_s),
    )
    stack.worker(env)
    tag = uuid.uuid4().hex[:6]
    text = f"Welcome back, row 11 {tag}! {directive(pending_s=size.gen_s, queue=0)}"
    sent_at: dict[str, float] = {}

    def submit(c: Caller, n: int, voice: str) -> str:
        jid = f"r9-{tag}-{n}"
        sent_at[jid] = time.time()
        c.send(
            names.SUBMIT_TTS, text, ELEVEN, voice=voice, notify_url=stack.receiver.url, job_id=jid
        )
        return jid

    with Caller(stack.url(db)) as c:
        first = [submit(c, n, "Rachel") for n in range(FIRST)]
        timeout_s = 60 + 4 * size.gen_s
        stack.tally.wait(first[:1], timeout_s=timeout_s)
        later = [submit(c, FIRST + n, "Rachel") for n in range(LATER)]
        other = submit(c, FIRST + LATER, "Adam")
    arrivals = stack.tally.wait([*first, *later, other], timeout_s=timeout_s)
    for body in (r.body for r in lane.sim.requests if r.method == "POST" and r.body):
        if tag in str(body.get("text")):
            lane.posts_same += body.get("voice") == "Rachel"
            lane.posts_other += body.get("voice") == "Adam"
    same = [*first, *later]
    lane.completed = sum(stack.tally.types.get(j) == "tts.completed" for j in same)
    audio = [_audio(stack, db, j) for j in same]
    lane.files = len({a.get("path") for a in audio})
    lane.digests = len({a.get("sha256") for a in audio})
    lane.first_s = [arrivals[j] - sent_at[j] for j in first]
    lane.later_s = [arrivals[j] - sent_at[j] for j in later]


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    lanes: list[Lane] = []
    with Stack() as stack, contextlib.ExitStack() as sims:
        for db, (label, ttl_s) in enumerate([("reuse", REUSE_TTL_S), ("off", 0)], start=1):
            sim = sims.enter_context(Simulator(api_key="x"))
            lane = Lane(label, ttl_s, sim)
            _run_lane(stack, lane, db, size)
            lanes.append(lane)
    reuse, off = lanes
    if reuse.completed < FIRST + LATER:
        raise BenchError(f"reuse lane: {FIRST + LATER - reuse.completed} jobs did not complete")
    rows = [
        "| lane | `TTS_REUSE_TTL` | POSTs, 30 identical | POSTs, other voice | completed"
        " | audio files (sha256) | send→webhook, 10 at once p50 / p95 | 20 later p50 / p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lane in lanes:
        rows.append(
            f"| {lane.label} | {lane.ttl_s} | {lane.posts_same} | {lane.posts_other} |"
            f" {lane.completed}/{FIRST + LATER} | {lane.files} ({lane.digests}) |"
            f" {statistics.median(lane.first_s):.2f} s / {_p(lane.first_s, 95):.2f} s |"
            f" {statistics.median(lane.later_s):.2f} s / {_p(lane.later_s, 95):.2f} s |"
        )
    details = [
        f"{FIRST} identical submits at once (text, model {ELEVEN}, voice Rachel; the simulator"
        f" generates each run for {size.gen_s:g} s), then {LATER} more once the first webhook"
        " came, and one with voice Adam. One worker per lane, prefork × 8 as the Procfile runs"
        " it, production defaults otherwise; lanes one after the other.",
        "",
        *rows,
        "",
        "POSTs: answered by the simulator. Audio files: distinct paths among the 30 identical"
        " jobs' outcomes (the simulator serves the same bytes to every run, so sha256 agrees in"
        " both lanes; the files do not).",
    ]
    passed = (
        reuse.posts_same == 1
        and reuse.posts_other == 1
        and reuse.completed == FIRST + LATER
        and reuse.files == 1
    )
    return Row(
        number=11,
        title=TITLE,
        target=TARGET,
        figure=(
            f"reuse: {reuse.posts_same} POST, {reuse.completed} completed, {reuse.files} file;"
            f" other voice {reuse.posts_other} POST; 20 later p95"
            f" {_p(reuse.later_s, 95):.2f} s (off: {off.posts_same} POSTs,"
            f" {off.files} files, p95 {_p(off.later_s, 95):.2f} s)"
        ),
        passed=passed,
        details=details,
        values={
            "lanes": [
                {
                    "label": lane.label,
                    "ttl_s": lane.ttl_s,
                    "posts_same": lane.posts_same,
                    "posts_other": lane.posts_other,
                    "completed": lane.completed,
                    "files": lane.files,
                    "first_p95_s": _p(lane.first_s, 95),
                    "later_p95_s": _p(lane.later_s, 95),
                }
                for lane in lanes
            ]
        },
    )
