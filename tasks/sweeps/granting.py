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
When jobs of more than one lane (priority, tenant: the job record's) wait for more tokens than
there are, the lanes share them first (:mod:`tasks.pacing.fairness`; its tags in
:data:`LANES_KEY`), each lane's jobs in that same order.
One script takes them (:meth:`tasks.pacing.budget.Budget.grant`): each job is taken off the wait
set by exactly one releaser and, under a budget, its next step spends the grant written with it.
Then the steps are published.

While parked, a job's entry in ``tts:due`` waits at its deadline, out of the reconciler's way
(nothing can lose a job that is only a score in Redis; issue 19 found 6,000 parked polls
re-checked every 30 s delaying a lost download by 65 s). The script that takes a job moves its
check time to one recovery grace from now, so a releaser that dies between taking and
publishing loses nothing: the reconciler re-sends the step after the grace, and the grant is
still in the record for it.

Ranking reads up to :data:`CANDIDATES` records and cost ~70 ms of CPU at 2,000 (issue 19); done
by every worker up to ten times a second, it grew with the backlog and the fleet. (Since, the
records come in one reply, :meth:`tasks.record.jobs.JobStore.fields_of`, and a record read the
same as at the last ranking is not parsed again.) So one releaser releases for the whole fleet
at a time (:class:`Releasing`: a lock in Redis with a short TTL, renewed by its holder each
tick, taken over when a holder stops), and it ranks at most once per :data:`RANK_TTL_S`,
granting from that ranking in between. Taking is
atomic either way, so which worker does it changes nothing else.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from tasks import metrics
from tasks.pacing import fairness, poll_value
from tasks.record.jobs import PARKED_FIELDS, POLLS_FROM, WAIT_KEY, Job, JobStore, Priority
from tasks.record.states import Status, has_live_poll, submit_to_resend
from tasks.steps.context import Ctx
from tasks.steps.poll import candidate

log = logging.getLogger(__name__)

# Jobs a tick takes at most per script with the budget off (unlimited tokens): bounds one
# script's time in Redis; a full batch is followed at once by the next (workers/poll_releaser.py).
UNLIMITED_BATCH = 500
# Due polls read to rank them when more are due than the budget serves: bounds a tick's work
# (one script reads them all); the rest wait for a later tick, when those ranked first have gone.
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
#: The lanes' tags (tasks/pacing/fairness.py): how far each priority, tenant and kind has been
#: served. Written by the releaser that leads, so the shares hold across ticks and hand-overs.
LANES_KEY = "tts:lanes"
# Kept a day after the last write: an idle deployment leaves nothing behind.
LANES_TTL_S = 86_400
# Waiting submits read each tick for their lanes, the oldest and the newest this many each: a
# tenant that comes while another's import waits is seen at once, at the back of the line.
SUBMIT_WINDOW = CANDIDATES // 2
# Lanes a releaser remembers by job id (a job's lane never changes, so each is read once, in
# one read for the ones a tick meets first): bounds its memory, ~200 B per entry.
LANE_CACHE = 50_000
# A job's lane as the cache keeps it: (priority, tenant; "" for none).
_LANE_FIELDS = ("priority", "tenant")
# Take the lock if it is free or already ours, and renew it. ARGV: owner, TTL in ms.
_LEAD = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _candidates(
    ctx: Ctx, ids: list[str], seen: dict[str, tuple[tuple[str | None, ...], poll_value.Candidate]]
) -> list[poll_value.Candidate]:
    """The ranking's view of each record: parsed afresh only where the record's fields differ
    from those ``seen`` parsed at the last ranking (most of a backlog waits unchanged from one
    ranking to the next); ``seen`` is left holding these ``ids`` only."""
    rows = ctx.jobs.fields_of(ids, PARKED_FIELDS)
    out = []
    now_seen = {}
    for job_id, values in zip(ids, rows, strict=True):
        key = tuple(values)
        hit = seen.get(job_id)
        # The record's own parsing (not a copy), unless this very record was parsed last time.
        c = hit[1] if hit is not None and hit[0] == key else candidate(Job.parked(job_id, values))
        now_seen[job_id] = (key, c)
        out.append(c)
    seen.clear()
    seen.update(now_seen)
    return out


def _lanes(ctx: Ctx, ids: list[str], known: dict[str, tuple[str, str]]) -> None:
    """Add the lanes of ``ids`` to ``known``: one round trip for those it does not hold. A
    record gone meanwhile reads as the default lane (the grant skips its job)."""
    unknown = [job_id for job_id in ids if job_id not in known]
    if not unknown:
        return
    if len(known) + len(unknown) > LANE_CACHE:
        known.clear()
        unknown = list(dict.fromkeys(ids))
    rows = ctx.jobs.fields_of(unknown, _LANE_FIELDS)
    for job_id, (priority, tenant) in zip(unknown, rows, strict=True):
        known[job_id] = (str(priority or Priority.NORMAL.value), str(tenant or ""))


@dataclass
class Releasing:
    """One releaser's standing: its owner id for the lock, its last ranking of due polls
    (best first) and when it was built, and the lanes of the jobs it has seen. One per
    releaser thread."""

    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    ranked: list[str] = field(default_factory=list)
    ranked_at: float = -math.inf
    lanes: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The lanes of the polls in ``ranked`` when it was built (a superset once some are taken).
    ranked_lanes: set[tuple[str, str]] = field(default_factory=set)
    # The records behind the last ranking as read and parsed: a record read the same again is
    # not parsed again.
    parsed: dict[str, tuple[tuple[str | None, ...], poll_value.Candidate]] = field(
        default_factory=dict
    )

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


def _ranking(ctx: Ctx, now: float, n: int, state: Releasing | None) -> list[str]:
    """The due polls, the most likely to find audio first: ``state``'s ranking while it is
    less than :data:`RANK_TTL_S` old and holds ``n``, else ranked afresh (and kept there)."""
    if state is not None and now - state.ranked_at < RANK_TTL_S and len(state.ranked) >= n:
        return state.ranked
    client = ctx.jobs.redis
    ids = [str(x) for x in client.zrangebyscore(WAIT_KEY, POLLS_FROM, now, 0, CANDIDATES)]
    candidates = _candidates(ctx, ids, state.parsed if state is not None else {})
    by_model = {
        model: poll_value.Generations(ctx.learning.fleet(model).generation_s)
        for model in {c.model or "" for c in candidates}
    }
    ranked = [
        c.job_id for c in poll_value.rank(candidates, now, poll_value.Generations([]), by_model)
    ]
    if state is not None:
        # A job's lane is read once per releaser (not with every ranking: two more fields in
        # each of its 2,000 HMGETs cost bench row 7 about a tenth of the releaser's CPU).
        _lanes(ctx, ranked, state.lanes)
        state.ranked, state.ranked_at = ranked, now
        state.ranked_lanes = {state.lanes[job_id] for job_id in ranked}
    return ranked


def _ranked_polls(ctx: Ctx, now: float, n: int, state: Releasing | None) -> list[str]:
    """The ``n`` due polls most likely to find audio, plus :data:`SPARE` when they come from a
    ranking built earlier; ranked afresh once that is :data:`RANK_TTL_S` old or used up."""
    ranked = _ranking(ctx, now, n, state)
    return ranked[: n + SPARE] if state is not None else ranked[:n]


@dataclass(frozen=True)
class Choice:
    """The jobs to offer tokens to, in order; with several lanes waiting, the lane of each
    and the lanes' tags they were chosen by (what :func:`_charge` counts the grants in)."""

    ids: list[str]
    lanes: dict[str, fairness.Lane] | None = None
    tags: dict[str, float] = field(default_factory=dict)


def choose(
    ctx: Ctx,
    *,
    now: float,
    tokens: int,
    draw: float,
    state: Releasing | None = None,
    rank: bool = True,
) -> Choice:
    """The waiting jobs to give ``tokens`` to, in order (a few spares beyond them when the
    polls come from a ranking a moment old: the grant skips those gone). Submits score below
    every poll in the one wait set (:func:`tasks.record.jobs.submit_score`), so each kind is
    one range of it. ``rank`` False (unlimited tokens, served batch after batch): all in one
    lane, polls in due order. Under a budget, jobs of more than one lane (priority, tenant)
    share by :mod:`tasks.pacing.fairness`; all in one lane, as before lanes existed: submits
    get their share, polls by their chance of finding audio."""
    client = ctx.jobs.redis
    with client.pipeline(transaction=False) as pipe:
        pipe.zcount(WAIT_KEY, POLLS_FROM, now)
        pipe.zrangebyscore(WAIT_KEY, "-inf", f"({POLLS_FROM}", 0, max(tokens, SUBMIT_WINDOW))
        if rank:
            pipe.zrevrangebyscore(WAIT_KEY, f"({POLLS_FROM}", "-inf", 0, SUBMIT_WINDOW)
            # The polls due since the ranking this tick may grant from (none if it is ranked
            # afresh): read with the rest, one round trip.
            fresh = state is not None and now - state.ranked_at < RANK_TTL_S
            since = state.ranked_at if state is not None and fresh else now
            pipe.zrangebyscore(WAIT_KEY, f"({since}", now, 0, CANDIDATES)
        due, oldest, *more = pipe.execute()
    oldest = [str(x) for x in oldest]
    if not rank or int(due) + len(oldest) <= tokens:
        # Every waiting job gets a token (or the tokens are unlimited): no lane to choose.
        return Choice(_one_lane(ctx, now, tokens, int(due), oldest, draw, state, rank))
    seen_submits = set(oldest)
    submit_ids = oldest + [i for x in reversed(more[0]) if (i := str(x)) not in seen_submits]
    known = state.lanes if state is not None else {}
    late: list[str] = []
    if int(due) > tokens:
        ranked_at = state.ranked_at if state is not None else now
        polls = _ranking(ctx, now, tokens, state)
        if state is not None:
            if state.ranked_at == ranked_at:  # polls due since, at the back of their lanes
                late = [str(x) for x in more[1]]
            ranked_lanes = state.ranked_lanes
        else:
            _lanes(ctx, polls, known)
            ranked_lanes = {known[job_id] for job_id in polls}
    else:
        polls = [str(x) for x in client.zrangebyscore(WAIT_KEY, POLLS_FROM, now)]
        _lanes(ctx, polls, known)
        ranked_lanes = {known[job_id] for job_id in polls}
    _lanes(ctx, late + submit_ids, known)
    lanes = ranked_lanes | {known[job_id] for job_id in late + submit_ids}
    if len(lanes) <= 1:
        return Choice(_one_lane(ctx, now, tokens, int(due), oldest, draw, state, rank))
    if late:
        seen = set(polls)
        polls = polls + [job_id for job_id in late if job_id not in seen]
    _lanes(ctx, polls + submit_ids, known)  # (none unknown, unless the cache was cleared)
    of: dict[str, fairness.Lane] = {}
    queues: dict[fairness.Lane, list[str]] = {}
    for kind, ids in ((fairness.POLL, polls), (fairness.SUBMIT, submit_ids)):
        for job_id in ids:
            lane = fairness.Lane(*known[job_id], kind)
            of[job_id] = lane
            queues.setdefault(lane, []).append(job_id)
    tags = fairness.finite(client.hgetall(LANES_KEY))
    return Choice(fairness.order(queues, tokens + SPARE, tags, shares(ctx)), of, tags)


def shares(ctx: Ctx) -> fairness.Shares:
    s = ctx.settings
    return fairness.Shares(s.interactive_share, s.bulk_share, s.upstream_submit_share)


def _one_lane(
    ctx: Ctx,
    now: float,
    tokens: int,
    due: int,
    oldest: list[str],
    draw: float,
    state: Releasing | None,
    rank: bool,
) -> list[str]:
    """Every waiting job in one lane: submits get their share of ``tokens`` (oldest first),
    polls the rest, by their chance of finding audio when more are due than that."""
    n_polls, n_submits = poll_value.share(
        tokens, due, len(oldest), submit_share=ctx.settings.upstream_submit_share, draw=draw
    )
    submits = oldest[:n_submits]
    if not n_polls:
        return submits
    if rank and due > n_polls:
        return _interleave(_ranked_polls(ctx, now, n_polls, state), submits)
    polls = ctx.jobs.redis.zrangebyscore(WAIT_KEY, POLLS_FROM, now, 0, n_polls)
    return _interleave([str(x) for x in polls], submits)


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
    choice = choose(ctx, now=now, tokens=tokens, draw=rand(), state=ranking, rank=limited)
    granted = ctx.budget.grant(choice.ids, check_at=now + ctx.settings.recovery_grace_s)
    if ranking is not None:
        ranking.taken(choice.ids, set(granted))
    for job in _read(ctx, granted):
        _publish(ctx, job)
    _charge(ctx, choice, granted)
    return len(granted)


def _charge(ctx: Ctx, choice: Choice, granted: list[str]) -> None:
    """Count the calls granted in the lanes' tags (only when several lanes waited: one lane
    alone needs no count, and gains no credit for the time it was alone). A tick whose write
    fails loses its own count only: logged, the jobs are published already."""
    if choice.lanes is None:
        return
    served = [choice.lanes[job_id] for job_id in granted if job_id in choice.lanes]
    tags = fairness.prune(fairness.charge(choice.tags, served, shares(ctx)))
    try:
        with ctx.jobs.redis.pipeline(transaction=True) as pipe:
            pipe.delete(LANES_KEY)
            if tags:
                pipe.hset(LANES_KEY, mapping={k: repr(v) for k, v in tags.items()})
                pipe.expire(LANES_KEY, LANES_TTL_S)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("the lanes' tags were not saved (%s): this tick's calls are not counted", exc)


@dataclass(frozen=True)
class LaneWaiting:
    """Jobs of one lane waiting for a NanoGPT call (``tts-worker status``)."""

    priority: str
    tenant: str | None
    polls_due: int
    submits_waiting: int


def waiting_by_lane(
    client: redis.Redis, now: float, *, limit: int = CANDIDATES
) -> tuple[list[LaneWaiting], bool]:
    """The due polls and waiting submits by lane, most urgent first, and whether that is all
    of them (False: only the ``limit`` earliest of each kind were read). One read of the wait
    set and one pipelined HMGET per job read: for an operator's look, not for each tick."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(WAIT_KEY, POLLS_FROM, now, 0, limit)
        pipe.zrangebyscore(WAIT_KEY, "-inf", f"({POLLS_FROM}", 0, limit)
        pipe.zcount(WAIT_KEY, POLLS_FROM, now)
        pipe.zcount(WAIT_KEY, "-inf", f"({POLLS_FROM}")
        polls, submits, n_polls, n_submits = pipe.execute()
    ids = [str(x) for x in [*polls, *submits]]
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(JobStore.key(job_id), _LANE_FIELDS)
        rows = pipe.execute()
    counts: dict[tuple[str, str], list[int]] = {}
    for i, (priority, tenant) in enumerate(rows):
        lane = (str(priority or Priority.NORMAL.value), str(tenant or ""))
        counts.setdefault(lane, [0, 0])[0 if i < len(polls) else 1] += 1
    order = {p.value: i for i, p in enumerate(Priority)}
    out = [
        LaneWaiting(priority, tenant or None, polls_due, submits_waiting)
        for (priority, tenant), (polls_due, submits_waiting) in sorted(
            counts.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
        )
    ]
    return out, len(polls) == int(n_polls) and len(submits) == int(n_submits)


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
