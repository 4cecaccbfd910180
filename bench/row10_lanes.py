"""Row 10: three tenants on one account (issue 22): a bulk import, a second tenant and an app's
interactive requests, one worker, NanoGPT refusing past 25 calls/s.

The workload: the importer's 400 texts at t = 0 (12 s of generation each), a second tenant's 40
at t = 5 s (12 s each), and an app's 20 ``interactive`` requests from t = 10 s, one every 2 s
(3 s each). Generation runs in the simulator's shared upstream queue (``gen_s``, ``slots``
generators, first in first out); the simulator refuses every ``/api/*`` call beyond 25 in any
second with ``429`` and ``Retry-After: 1``, as NanoGPT's account-wide limit does.

Two lanes run one after the other, each with its own simulator, Redis database and one worker
as the Procfile runs it (prefork × 8), ``TTS_UPSTREAM_RATE=20``, production defaults otherwise:

* ``lanes``: each message says its ``tenant`` (``importer``, ``shop``, ``app``) and the app's
  say ``priority="interactive"`` (the others leave it out: ``normal``);
* ``one lane``: the same messages without ``tenant`` and ``priority``: every job in the one
  default lane, the release order of main before issue 22 (its code path, unchanged).

Per tenant: jobs completed, the time from sending the message to its first POST that NanoGPT
answered (p50, p95), and from sending to the webhook at the receiver (p95); per lane the calls
answered and refused. Targets (the issue's): every job completes, ≤ 1 % refused, the app's p95
send → POST ≤ 1.5 s and send → webhook ≤ 8 s, the second tenant's p95 send → POST ≤ 12 s.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.report import Row
from bench.rig import ELEVEN, BenchError, Caller, Stack, directive, percentile
from tasks import names
from workers.simulator import Simulator

TITLE = (
    "Three tenants on one account (400 bulk, 40 of a second tenant, 20 interactive): p95 per tenant"
)
TARGET = "all completed, ≤ 1 % refused, app p95 send→POST ≤ 1.5 s and →webhook ≤ 8 s, 2nd ≤ 12 s"
MAX_REFUSED_SHARE = 0.01
APP_POST_P95_S = 1.5
APP_WEBHOOK_P95_S = 8.0
SECOND_POST_P95_S = 12.0
SIM_RATE_PER_S = 25.0  # NanoGPT's documented limit per account
BUDGET_RATE_PER_S = 20.0  # TTS_UPSTREAM_RATE's default
_JOB = re.compile(r"^Row 10 (\S+) ")


@dataclass(frozen=True)
class Tenant:
    name: str
    jobs: int
    gen_s: float
    start_s: float
    every_s: float  # 0: all at once
    priority: str | None = None


@dataclass(frozen=True)
class Size:
    tenants: tuple[Tenant, ...]
    slots: int


SIZES = {
    "full": Size(
        (
            Tenant("importer", 400, 12.0, 0.0, 0.0),
            Tenant("shop", 40, 12.0, 5.0, 0.0),
            Tenant("app", 20, 3.0, 10.0, 2.0, "interactive"),
        ),
        slots=100,
    ),
    "mini": Size(
        (
            Tenant("importer", 60, 2.0, 0.0, 0.0),
            Tenant("shop", 10, 2.0, 1.0, 0.0),
            Tenant("app", 4, 1.0, 2.0, 1.0, "interactive"),
        ),
        slots=20,
    ),
}


@dataclass
class Lane:
    label: str
    with_lanes: bool
    sim: Simulator
    sent_at: dict[str, float] = field(default_factory=dict)
    tenant_of: dict[str, str] = field(default_factory=dict)
    answered: int = 0
    refused: int = 0
    posted_at: dict[str, float] = field(default_factory=dict)
    webhook_at: dict[str, float] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)  # generation's end upstream
    # The interactive jobs' timelines (seconds from sending): POST, ready, each status call,
    # webhook; in the row's JSON, to see where a slow one spent its time.
    timelines: list[dict[str, Any]] = field(default_factory=list)
    completed: dict[str, int] = field(default_factory=dict)
    load: str = ""

    @property
    def refused_share(self) -> float:
        total = self.answered + self.refused
        return self.refused / total if total else 0.0

    def to_post(self, tenant: str) -> list[float]:
        return [
            self.posted_at[j] - self.sent_at[j]
            for j, t in self.tenant_of.items()
            if t == tenant and j in self.posted_at
        ]

    def to_ready(self, tenant: str) -> list[float]:
        """From the POST to the end of generation upstream (NanoGPT's queue and generation)."""
        return [
            self.ready_at[j] - self.posted_at[j]
            for j, t in self.tenant_of.items()
            if t == tenant and j in self.ready_at and j in self.posted_at
        ]

    def ready_to_webhook(self, tenant: str) -> list[float]:
        return [
            self.webhook_at[j] - self.ready_at[j]
            for j, t in self.tenant_of.items()
            if t == tenant and j in self.ready_at and j in self.webhook_at
        ]

    def to_webhook(self, tenant: str) -> list[float]:
        return [
            self.webhook_at[j] - self.sent_at[j]
            for j, t in self.tenant_of.items()
            if t == tenant and j in self.webhook_at
        ]


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _messages(lane: Lane, tenant: Tenant, tag: str) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for n in range(tenant.jobs):
        jid = f"r10-{tag}-{tenant.name}-{n}"
        lane.tenant_of[jid] = tenant.name
        text = f"Row 10 {jid} {directive(gen_s=tenant.gen_s)}"
        kwargs: dict[str, Any] = {"job_id": jid}
        if lane.with_lanes:
            kwargs["tenant"] = tenant.name
            if tenant.priority:
                kwargs["priority"] = tenant.priority
        out.append((jid, text, kwargs))
    return out


def _send(stack: Stack, lane: Lane, db: int, size: Size) -> None:
    """Send each tenant's messages at their times (the importer's all at once)."""
    tag = uuid.uuid4().hex[:6]
    plan: list[tuple[float, list[tuple[str, str, dict[str, Any]]]]] = []
    for tenant in size.tenants:
        messages = _messages(lane, tenant, tag)
        if tenant.every_s:
            plan += [(tenant.start_s + i * tenant.every_s, [m]) for i, m in enumerate(messages)]
        else:
            plan.append((tenant.start_s, messages))
    plan.sort(key=lambda step: step[0])
    started = time.time()
    with Caller(stack.url(db)) as c:
        for at_s, batch in plan:
            time.sleep(max(0.0, started + at_s - time.time()))
            for jid, text, kwargs in batch:
                lane.sent_at[jid] = time.time()
                c.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=stack.receiver.url, **kwargs)


def _run_lane(stack: Stack, lane: Lane, db: int, size: Size) -> None:
    env = stack.env(
        stack.url(db),
        NANOGPT_BASE_URL=lane.sim.base_url,
        NANOGPT_API_KEY="x",
        TTS_UPSTREAM_RATE=repr(BUDGET_RATE_PER_S),
    )
    stack.worker(env)
    lane.load = _load()
    _send(stack, lane, db, size)
    jobs = sum(t.jobs for t in size.tenants)
    mean_gen_s = statistics.mean(t.gen_s for t in size.tenants for _ in range(t.jobs))
    horizon_s = 180 + jobs * mean_gen_s / size.slots + jobs / 2
    lane.webhook_at = stack.tally.wait(list(lane.tenant_of), timeout_s=horizon_s)
    for path_calls in lane.sim.calls().values():
        lane.answered += path_calls.answered
        lane.refused += path_calls.refused
    for r in lane.sim.requests:
        if r.method != "POST" or r.path != "/api/tts" or r.limited or not r.body:
            continue
        match = _JOB.match(str(r.body.get("text", "")))
        if match and match.group(1) not in lane.posted_at:
            lane.posted_at[match.group(1)] = r.at
    for jid, tenant in lane.tenant_of.items():
        if stack.tally.types.get(jid) == "tts.completed":
            lane.completed[tenant] = lane.completed.get(tenant, 0) + 1
        run_id = stack.tally.run_ids.get(jid)
        ready = lane.sim.finished_at(run_id) if run_id else None
        if ready is not None:
            lane.ready_at[jid] = ready
        if run_id and tenant == size.tenants[-1].name:
            sent = lane.sent_at[jid]
            lane.timelines.append(
                {
                    "job": jid,
                    "post_s": round(lane.posted_at.get(jid, sent) - sent, 2),
                    "ready_s": round((ready or sent) - sent, 2),
                    "polls_s": [round(r.at - sent, 2) for r in lane.sim.status_polls(run_id)],
                    "webhook_s": round(lane.webhook_at.get(jid, sent) - sent, 2),
                }
            )


def run(size_name: str) -> Row:
    size = SIZES[size_name]
    lanes: list[Lane] = []
    with Stack() as stack, contextlib.ExitStack() as sims:
        for db, (label, with_lanes) in enumerate((("lanes", True), ("one lane", False)), 1):
            sim = sims.enter_context(
                Simulator(api_key="x", upstream_slots=size.slots, rate_limit_per_s=SIM_RATE_PER_S)
            )
            lane = Lane(label, with_lanes, sim)
            _run_lane(stack, lane, db, size)
            lanes.append(lane)
    on, off = lanes
    app, second = size.tenants[2].name, size.tenants[1].name
    expected = {t.name: t.jobs for t in size.tenants}
    if on.completed != expected:
        raise BenchError(f"lanes: completed {on.completed}, expected {expected}")
    rows = [
        "| run | tenant | jobs | completed | send→POST p50 | p95 | send→webhook p50 | p95"
        " | POST→ready p95 | ready→webhook p95 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lane in lanes:
        for t in size.tenants:
            post, hook = lane.to_post(t.name), lane.to_webhook(t.name)
            rows.append(
                f"| {lane.label} | {t.name} ({t.priority or 'normal'}, {t.gen_s:g} s) |"
                f" {t.jobs} | {lane.completed.get(t.name, 0)} | {_p(post, 50):.2f} s |"
                f" {_p(post, 95):.2f} s | {_p(hook, 50):.2f} s | {_p(hook, 95):.2f} s |"
                f" {_p(lane.to_ready(t.name), 95):.2f} s |"
                f" {_p(lane.ready_to_webhook(t.name), 95):.2f} s |"
            )
    calls = [
        "| run | calls answered | refused (429) | refused share | load at start (1/5/15) |",
        "|---|---|---|---|---|",
        *(
            f"| {lane.label} | {lane.answered} | {lane.refused} | {lane.refused_share:.1%} |"
            f" {lane.load} |"
            for lane in lanes
        ),
    ]
    details = [
        "; ".join(
            f"{t.name}: {t.jobs} × {t.gen_s:g} s from t = {t.start_s:g} s"
            + (f", one every {t.every_s:g} s" if t.every_s else " at once")
            for t in size.tenants
        )
        + f". Generation through a first-in-first-out upstream queue with {size.slots}"
        f" generators; the simulator refuses every call past {SIM_RATE_PER_S:g} in any second"
        " (429, `Retry-After: 1`). One worker per run, prefork × 8 as the Procfile runs it,"
        f" `TTS_UPSTREAM_RATE={BUDGET_RATE_PER_S:g}`, production defaults otherwise; the runs"
        " one after the other. **lanes**: each message names its `tenant`, the app's say"
        ' `priority="interactive"`; **one lane**: the same messages without them, so every'
        " job waits in the one default lane: the release order before issue 22.",
        "",
        *rows,
        "",
        *calls,
        "",
        "send→POST: from publishing the message to the simulator's receipt of its first POST"
        " that was not refused; send→webhook: to the webhook's arrival at the receiver;"
        " POST→ready: NanoGPT's side (its queue and the generation), ready→webhook: ours again"
        " (the polls' schedule, the budget, the download and the webhook).",
    ]
    app_post, app_hook = _p(on.to_post(app), 95), _p(on.to_webhook(app), 95)
    second_post = _p(on.to_post(second), 95)
    passed = (
        on.refused_share <= MAX_REFUSED_SHARE
        and app_post <= APP_POST_P95_S
        and app_hook <= APP_WEBHOOK_P95_S
        and second_post <= SECOND_POST_P95_S
    )
    before = (
        f"one lane (before): app {_p(off.to_post(app), 95):.1f} s / "
        f"{_p(off.to_webhook(app), 95):.1f} s, {second} {_p(off.to_post(second), 95):.1f} s"
    )
    return Row(
        number=10,
        title=TITLE,
        target=TARGET,
        figure=(
            f"lanes: app p95 send→POST {app_post:.2f} s, →webhook {app_hook:.1f} s; {second}"
            f" send→POST {second_post:.1f} s; {on.refused_share:.1%} refused,"
            f" {sum(on.completed.values())}/{sum(expected.values())} completed; {before}"
        ),
        passed=passed if size_name == "full" else None,
        details=details,
        values={
            "runs": [
                {
                    "label": lane.label,
                    "answered": lane.answered,
                    "refused": lane.refused,
                    "load_at_start": lane.load,
                    "interactive_timelines": lane.timelines,
                    "tenants": {
                        t.name: {
                            "completed": lane.completed.get(t.name, 0),
                            "post_p50_s": _p(lane.to_post(t.name), 50),
                            "post_p95_s": _p(lane.to_post(t.name), 95),
                            "webhook_p50_s": _p(lane.to_webhook(t.name), 50),
                            "webhook_p95_s": _p(lane.to_webhook(t.name), 95),
                            "ready_p95_s": _p(lane.to_ready(t.name), 95),
                            "ready_to_webhook_p95_s": _p(lane.ready_to_webhook(t.name), 95),
                        }
                        for t in size.tenants
                    },
                }
                for lane in lanes
            ]
        },
    )
