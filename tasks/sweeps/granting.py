"""Releasing the jobs that wait in Redis: the one place a waiting step waits, on every broker.

A job waits for its next NanoGPT call in one sorted set, :data:`tasks.record.jobs.WAIT_KEY`: a
pending poll until it is due (the poll step parks it in the same atomic step that records the
answer), a poll or a submit that found no budget until the budget has a token for it. No worker
holds a waiting job in memory and none is lost with a worker, on RabbitMQ as on Redis (a
countdown message on the Redis transport sat in the memory of the worker that fetched it, about
8.7 KB each, Celery issue #5535, and a SIGKILL stranded it until the visibility timeout).

Every worker's releaser thread (``workers/poll_releaser.py``) calls :func:`release` each tick.
It takes the tokens the budget has free (:meth:`tasks.pacing.budget.Budget.free`; with the
budget off, ``TTS_UPSTREAM_RATE=0``, the tokens are unlimited and a tick takes
:data:`UNLIMITED_BATCH` at a time) and splits them between the two kinds
(:func:`tasks.pacing.poll_value.share`: submits get their share so new work keeps entering);
submits go oldest first, polls by their chance of finding audio
(:func:`tasks.pacing.poll_value.rank`) when more are due than can be served, else in due order.
One script takes them (:meth:`tasks.pacing.budget.Budget.grant`): each job is taken off the wait
set by exactly one releaser and, under a budget, its next step spends the grant written with it.
Then the steps are published.

While parked, a job's entry in ``tts:due`` waits at its deadline, out of the reconciler's way
(nothing can lose a job that is only a score in Redis; issue 19 found 6,000 parked polls
re-checked every 30 s delaying a lost download by 65 s). The script that takes a job moves its
check time to one recovery grace from now, so a releaser that dies between taking and
publishing loses nothing: the reconciler re-sends the step after the grace, and the grant is
still in the record for it.

Ranking reads up to :data:`CANDIDATES` records (one HMGET each) and costs ~70 ms of CPU at
2,000 (issue 19); done by every worker up to ten times a second, it grew with the backlog and
the fleet. So one releaser releases for the whole fleet at a time (:class:`Releasing`: a lock in
Redis with a short TTL, renewed by its holder each tick, taken over when a holder stops), and
it ranks at most once per :data:`RANK_TTL_S`, granting from that ranking in between. Taking is
atomic either way, so which worker does it changes nothing else.
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
from tasks.record.jobs import PARKED_FIELDS, POLLS_FROM, WAIT_KEY, Job
from tasks.record.states import Status, has_live_poll, submit_to_resend
from tasks.steps.context import Ctx
from tasks.steps.poll import candidate

log = logging.getLogger(__name__)

# Jobs a tick takes at most per script with the budget off (unlimited tokens): bounds one
# script's time in Redis; a full batch is followed at once by the next (workers/poll_releaser.py).
UNLIMITED_BATCH = 500
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
    ids = [str(x) for x in client.zrangebyscore(WAIT_KEY, POLLS_FROM, now, 0, CANDIDATES)]
    candidates = _candidates(ctx, ids)
    by_model = {
        model: poll_value.Generations(ctx.learning.fleet(model).generation_s)
        for model in {c.model or "" for c in candidates}
    }
    ranked = [
        c.job_id for c in poll_value.rank(candidates, now, poll_value.Generations([]), by_model)
    ]
    if state is None:
        return ranked[:n]
    state.ranked, state.ranked_at = ranked, now
    return ranked[: n + SPARE]


def choose(
    ctx: Ctx,
    *,
    now: float,
    tokens: int,
    draw: float,
    state: Releasing | None = None,
    rank: bool = True,
) -> tuple[list[str], list[str]]:
    """The polls and submits to give ``tokens`` to, best first (polls from ``state``'s
    ranking while it is fresh, with a few spares). Submits score below every poll in the one
    wait set (:func:`tasks.record.jobs.submit_score`), so each kind is one range of it.
    ``rank`` False (unlimited tokens, served batch after batch): polls in due order."""
    client = ctx.jobs.redis
    with client.pipeline(transaction=False) as pipe:
        pipe.zcount(WAIT_KEY, POLLS_FROM, now)
        pipe.zrangebyscore(WAIT_KEY, "-inf", f"({POLLS_FROM}", 0, tokens)
        due, waiting = pipe.execute()
    n_polls, n_submits = poll_value.share(
        tokens, int(due), len(waiting), submit_share=ctx.settings.upstream_submit_share, draw=draw
    )
    submits = [str(x) for x in waiting[:n_submits]]
    if not n_polls:
        return [], submits
    if rank and int(due) > n_polls:
        return _ranked_polls(ctx, now, n_polls, state), submits
    polls = client.zrangebyscore(WAIT_KEY, POLLS_FROM, now, 0, n_polls)
    return [str(x) for x in polls], submits


def release(
    ctx: Ctx, *, rand: Callable[[], float] = random.random, state: Releasing | None = None
) -> int:
    """Give the budget's free tokens (unlimited with the budget off) to waiting jobs and
    publish their steps; returns how many jobs were taken off the wait set for it. With
    ``state`` (a worker's releaser thread), only while it holds the fleet's lock, and from its
    ranking while that is fresh."""
    leading = state is None or state.lead(ctx)
    tokens, rate = ctx.budget.free()
    metrics.budget(tokens, rate)  # every worker's gauges stay current
    limited = ctx.budget.on
    if not limited:
        tokens = UNLIMITED_BATCH
    if not leading or tokens <= 0:
        return 0
    now = ctx.clock()
    ranking = state if limited else None
    polls, submits = choose(ctx, now=now, tokens=tokens, draw=rand(), state=ranking, rank=limited)
    choices = _interleave(polls, submits)
    granted = ctx.budget.grant(choices, check_at=now + ctx.settings.recovery_grace_s)
    if ranking is not None:
        ranking.taken(polls, set(granted))
    for job in _read(ctx, granted):
        _publish(ctx, job)
    return len(granted)


def _read(ctx: Ctx, job_ids: list[str]) -> list[Job]:
    """The records of the jobs taken, in one round trip (one expired meanwhile is skipped: its
    step has nothing to do)."""
    if not job_ids:
        return []
    with ctx.jobs.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(ctx.jobs.key(job_id))
        rows = pipe.execute()
    return [Job.from_hash(raw) for raw in rows if raw]


def _publish(ctx: Ctx, job: Job) -> None:
    """The step a taken job waited for: its POST, or its current poll."""
    if job.status == Status.SUBMITTING and (submit := submit_to_resend(job)):
        request, owner = submit
        ctx.dispatch.submit(request, task_id=owner)
    elif has_live_poll(job):
        ctx.dispatch.poll_job(job)


def _interleave(a: list[str], b: list[str]) -> list[str]:
    """Alternate the two kinds, so a grant cut short by another releaser shares the loss."""
    out: list[str] = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out
