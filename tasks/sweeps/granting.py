"""Handing the NanoGPT budget's free tokens to the jobs that wait for them.

Every worker's releaser thread (``workers/poll_releaser.py``) calls :func:`release` each tick.
Waiting are the due parked polls (``tts:wait``) and the submits that found no budget
(``tts:submit-wait``). The free tokens are split between the two kinds
(:func:`tasks.pacing.poll_value.share`: submits get their share so new work keeps entering); submits
go oldest first, polls by their chance of finding audio (:func:`tasks.pacing.poll_value.rank`) when
more are due than can be served, else in due order. One script grants the tokens
(:meth:`tasks.pacing.budget.Budget.grant`): each job is taken off its wait set by exactly one
releaser and its next step spends the grant. Then the step is published.

A releaser that dies after granting loses nothing: the grant script moves each granted job's
check time to one recovery grace from now, and the reconciler re-sends its step after that;
the grant is still in the record for it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from tasks import metrics
from tasks.pacing import poll_value
from tasks.record.jobs import PARKED_FIELDS, SUBMIT_WAIT_KEY, WAIT_KEY, Job
from tasks.record.states import Status, has_live_poll, submit_to_resend
from tasks.steps.context import Ctx
from tasks.steps.poll import candidate

log = logging.getLogger(__name__)

# Due polls read to rank them when more are due than the budget serves: bounds a tick's work
# (one HMGET each); the rest wait for a later tick, when those ranked first have gone.
CANDIDATES = 2000


def _candidates(ctx: Ctx, ids: list[str]) -> list[poll_value.Candidate]:
    client = ctx.jobs.redis
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(ctx.jobs.key(job_id), PARKED_FIELDS)
        rows = pipe.execute()
    # The record's own parsing, not a copy.
    return [candidate(Job.parked(job_id, values)) for job_id, values in zip(ids, rows, strict=True)]


def choose(ctx: Ctx, *, now: float, tokens: int, draw: float) -> tuple[list[str], list[str]]:
    """The polls and submits to grant ``tokens`` to, best first."""
    client = ctx.jobs.redis
    with client.pipeline(transaction=False) as pipe:
        pipe.zcount(WAIT_KEY, "-inf", now)
        pipe.zrange(SUBMIT_WAIT_KEY, 0, tokens - 1)
        due, submits = pipe.execute()
    n_polls, n_submits = poll_value.share(
        tokens, int(due), len(submits), submit_share=ctx.settings.upstream_submit_share, draw=draw
    )
    polls: list[str] = []
    if n_polls and int(due) <= n_polls:
        polls = [str(x) for x in client.zrangebyscore(WAIT_KEY, "-inf", now)]
    elif n_polls:
        ids = [str(x) for x in client.zrangebyscore(WAIT_KEY, "-inf", now, 0, CANDIDATES)]
        gens = poll_value.Generations(ctx.budget.generation_samples())
        ranked = poll_value.rank(_candidates(ctx, ids), now, gens)
        polls = [c.job_id for c in ranked[:n_polls]]
    return polls[:n_polls], [str(x) for x in submits[:n_submits]]


def release(ctx: Ctx, *, rand: Callable[[], float] = random.random) -> int:
    """Promise the budget's free tokens to waiting jobs and publish their steps; returns how
    many were published."""
    tokens, rate = ctx.budget.free()
    metrics.budget(tokens, rate)
    if tokens <= 0:
        return 0
    now = ctx.clock()
    polls, submits = choose(ctx, now=now, tokens=tokens, draw=rand())
    choices = _interleave([("p", x) for x in polls], [("s", x) for x in submits])
    granted = set(ctx.budget.grant(choices, check_at=now + ctx.settings.recovery_grace_s))
    if not granted:
        return 0
    sent = 0
    for kind, job_id in choices:
        if job_id not in granted:
            continue
        job = ctx.jobs.get(job_id)
        if job is None:
            continue
        _publish(ctx, kind, job)
        sent += 1
    return sent


def _publish(ctx: Ctx, kind: str, job: Job) -> None:
    if kind == "p":
        if has_live_poll(job):
            ctx.dispatch.poll_job(job)
    elif job.status == Status.SUBMITTING and (submit := submit_to_resend(job)):
        request, owner = submit
        ctx.dispatch.submit(request, task_id=owner)


def _interleave(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Alternate the two kinds, so a grant cut short by another releaser shares the loss."""
    out: list[tuple[str, str]] = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out
