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

Ranking reads up to :data:`CANDIDATES` records (one HMGET each) and costs ~70 ms of CPU at
2,000 (issue 19); done by every worker up to ten times a second, it grew with the backlog and
the fleet. So one releaser grants for the whole fleet at a time (:class:`Releasing`: a lock in
Redis with a short TTL, renewed by its holder each tick, taken over when a holder stops), and
it ranks at most once per :data:`RANK_TTL_S`, granting from that ranking in between. Grants
are promises written atomically either way, so which worker makes them changes nothing else.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

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
# A ranking is used this long before it is built again: chances move over seconds, and jobs
# that became due since wait at most this long to be considered.
RANK_TTL_S = 1.0
# Polls offered beyond the tokens from a ranking a moment old: some it names may have gone
# (granted by another releaser, ended, or parked again); the grant script skips those.
SPARE = 8
#: The releaser that grants for the fleet: its owner id, expiring LEADER_TTL_S after its last
#: tick, so another takes over soon after a holder stops.
LEADER_KEY = "tts:releaser:leader"
LEADER_TTL_S = 1.0
# Take the lock if it is free or already ours, and renew it. ARGV: owner, TTL in ms.
_LEAD = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _candidates(ctx: Ctx, ids: list[str]) -> list[poll_value.Candidate]:
    client = ctx.jobs.redis
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(ctx.jobs.key(job_id), PARKED_FIELDS)
        rows = pipe.execute()
    # The record's own parsing, not a copy.
    return [candidate(Job.parked(job_id, values)) for job_id, values in zip(ids, rows, strict=True)]


@dataclass
class Releasing:
    """One releaser's standing: its owner id for the lock, and its last ranking of due polls
    (best first) and when it was built. One per releaser thread."""

    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    ranked: list[str] = field(default_factory=list)
    ranked_at: float = -math.inf

    def lead(self, ctx: Ctx) -> bool:
        """Whether this releaser grants for the fleet now: it holds (and renews) the lock."""
        ttl_ms = int(LEADER_TTL_S * 1000)
        return bool(ctx.jobs.redis.eval(_LEAD, 1, LEADER_KEY, self.owner, ttl_ms))

    def taken(self, offered: list[str], granted: set[str]) -> None:
        """The grant script went through ``offered`` up to its last granted id: those before it
        it took or skipped, so they leave the ranking; the rest keep their place."""
        last = max((i for i, job_id in enumerate(offered) if job_id in granted), default=-1)
        gone = set(offered[: last + 1])
        if gone:
            self.ranked = [job_id for job_id in self.ranked if job_id not in gone]


def _ranked_polls(ctx: Ctx, now: float, n: int, state: Releasing | None) -> list[str]:
    """The ``n`` due polls most likely to find audio, plus :data:`SPARE` when they come from a
    ranking built earlier; ranked afresh once that is :data:`RANK_TTL_S` old or used up."""
    if state is not None and now - state.ranked_at < RANK_TTL_S and len(state.ranked) >= n:
        return state.ranked[: n + SPARE]
    client = ctx.jobs.redis
    ids = [str(x) for x in client.zrangebyscore(WAIT_KEY, "-inf", now, 0, CANDIDATES)]
    gens = poll_value.Generations(ctx.budget.generation_samples())
    ranked = [c.job_id for c in poll_value.rank(_candidates(ctx, ids), now, gens)]
    if state is None:
        return ranked[:n]
    state.ranked, state.ranked_at = ranked, now
    return ranked[: n + SPARE]


def choose(
    ctx: Ctx, *, now: float, tokens: int, draw: float, state: Releasing | None = None
) -> tuple[list[str], list[str]]:
    """The polls and submits to grant ``tokens`` to, best first (polls from ``state``'s
    ranking while it is fresh, with a few spares)."""
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
        return _ranked_polls(ctx, now, n_polls, state), [str(x) for x in submits[:n_submits]]
    return polls[:n_polls], [str(x) for x in submits[:n_submits]]


def release(
    ctx: Ctx, *, rand: Callable[[], float] = random.random, state: Releasing | None = None
) -> int:
    """Promise the budget's free tokens to waiting jobs and publish their steps; returns how
    many were published. With ``state`` (a worker's releaser thread), only while it holds the
    fleet's lock, and from its ranking while that is fresh."""
    leading = state is None or state.lead(ctx)
    tokens, rate = ctx.budget.free()
    metrics.budget(tokens, rate)  # every worker's gauges stay current
    if not leading or tokens <= 0:
        return 0
    now = ctx.clock()
    polls, submits = choose(ctx, now=now, tokens=tokens, draw=rand(), state=state)
    choices = _interleave([("p", x) for x in polls], [("s", x) for x in submits])
    granted = set(ctx.budget.grant(choices, check_at=now + ctx.settings.recovery_grace_s))
    if state is not None:
        state.taken(polls, granted)
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
