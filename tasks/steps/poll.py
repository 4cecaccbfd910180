"""The poll step: one status call per execution; while pending, the next poll is parked in
Redis (tasks/sweeps/granting.py releases it when due), never waited for."""

from __future__ import annotations

import logging
import uuid

from tasks import errors, logctx, metrics
from tasks.nanogpt import validation
from tasks.nanogpt.parsing import PENDING_STATUSES, AudioLink, Failed, Pending
from tasks.pacing import aim, fairness, poll_value, schedule
from tasks.record.contract import poll_grant
from tasks.record.jobs import Job
from tasks.record.states import Status
from tasks.steps import accept
from tasks.steps.base import Delivery, Result, poisoned, retry_or_fail
from tasks.steps.context import Ctx
from tasks.steps.outcomes import check_at, fail
from tasks.steps.progress import publish as publish_progress
from tasks.steps.progress import queue_eta_s

log = logging.getLogger(__name__)


def poll(
    ctx: Ctx,
    d: Delivery,
    run_id: object,
    model: object,
    *,
    cost: object = None,
    payment_source: object = None,
    is_api_request: object = True,
    notify_url: object = None,
    job_id: object = None,
    tenant: object = None,
    priority: object = "normal",
    lease: object = None,
    seq: object = 0,
) -> Result:
    """Check a run's status once; re-queue while pending. ``lease`` and ``seq`` are internal
    (the chain's token and this poll's number): a call without them starts a chain, unless the
    job id (``job_id``, else the run id) is already known. ``tenant`` and ``priority``: the
    lane of a chain it starts (tasks/pacing/fairness.py)."""
    try:
        jid = validation.job_id(run_id if job_id is None else job_id)
        request = validation.poll_request(
            run_id, model, cost=cost, payment_source=payment_source, is_api_request=is_api_request
        )
        url = validation.notify_url(notify_url)
        lane = validation.lane(tenant, priority)
        if lease is not None and (not isinstance(lease, str) or not isinstance(seq, int)):
            raise errors.InvalidInput("lease and seq are internal: leave them out")
    except errors.InvalidInput as exc:
        return accept.reject(ctx, d, job_id, exc, notify_url)
    logctx.bind_job(jid)
    if lease is None:
        # This very message may have started the chain before (when the worker received it,
        # or before a redelivery): then its token comes back, while its first poll is due.
        token = accept.accept_poll(ctx, jid, request, url, owner=d.task_id, lane=lane)
        if token is None:
            log.info("job %s already exists; duplicate poll chain ignored", jid)
            return jid
        lease, seq = token, 0
    assert isinstance(lease, str)
    assert isinstance(seq, int)

    job, deliveries = ctx.jobs.load(jid, delivery=d.step(seq))
    if job is None or not job.holds(lease, seq):
        log.info("job %s: poll %s is not the current one; exiting", jid, seq)
        return jid
    if poisoned(ctx, d, jid, deliveries):
        return jid
    held = (lease, seq)
    # The job record is the truth: re-queued polls carry only ids and the lease.
    request = validation.PollRequest(
        run_id=job.run_id or request.run_id,
        model=job.model or request.model,
        cost=job.cost,
        payment_source=job.payment_source,
        is_api_request=job.is_api_request,
    )
    now = ctx.clock()
    metrics.poll_lag(job.next_poll_at, now=now)
    deadline_at = job.deadline_at or now
    if now >= deadline_at:
        return fail(
            ctx,
            jid,
            errors.DeadlineExceeded("the job did not finish before its deadline"),
            lease=held,
        )

    s = ctx.settings
    # This execution's own id: its transitions, run again (a lost reply), know their own work.
    attempt = uuid.uuid4().hex
    if ctx.budget.spend(jid, poll_grant(seq)) > 0:
        # No budget now: the call is not made, and this is not a retry. The poll waits in the
        # wait set, due at once, for the releaser to grant it a token by its chance of finding
        # audio (tasks/pacing/poll_value.py); no worker slot holds it meanwhile.
        metrics.poll_deferred()
        metrics.lane_deferred(job.priority, job.tenant)
        ctx.jobs.defer_poll(
            jid, lease, seq, due_at=now, deliveries=deliveries, deadline_at=deadline_at
        )
        return jid
    metrics.upstream_call("status")
    metrics.lane_call(job.priority, job.tenant)
    try:
        result = ctx.upstream.status(request)
    except errors.TransientError as exc:
        metrics.poll("retry")
        if isinstance(exc, errors.RateLimited):
            ctx.budget.refused()
        return retry_or_fail(
            ctx,
            d,
            exc,
            jid,
            max_retries=s.max_retries,
            deadline_at=deadline_at,
            lease=held,
            retries=job.tries,
        )
    except errors.PermanentError as exc:
        metrics.poll("failed")
        return fail(ctx, jid, exc, lease=held, polls=job.polls + 1)

    if isinstance(result, Failed):
        metrics.poll("failed")
        return fail(ctx, jid, result.error, lease=held, polls=job.polls + 1)
    if isinstance(result, AudioLink):
        metrics.poll("completed")
        fields = {
            "last_status": "completed",
            "audio_url": result.audio_url,
            "content_type": result.content_type,
            "request_id": result.request_id,
        }
        if ctx.jobs.end_polling(
            jid, lease, seq, fields, check_at=check_at(ctx, s.download_timeout_s), attempt=attempt
        ):
            publish_progress(ctx, jid, Status.DOWNLOADING)
            ctx.dispatch.download(jid)
            _learn_generation(ctx, job, now)
        return jid
    metrics.poll("pending")
    return _requeue(ctx, job, result, held, deadline_at, attempt=attempt)


def _requeue(
    ctx: Ctx,
    job: Job,
    pending: Pending,
    held: tuple[str, int],
    deadline_at: float,
    *,
    attempt: str,
) -> str:
    s = ctx.settings
    now = ctx.clock()
    position = pending.queue_position
    before = schedule.Seen(job.queue_first_position, job.queue_first_seen_at, job.head_since)
    progress, seen = before.after(position, now)
    interval_s, max_interval_s = fairness.poll_intervals(
        job.priority,
        interval_s=s.poll_interval_s,
        max_interval_s=s.poll_max_interval_s,
        interactive_s=s.interactive_poll_interval_s,
    )
    _learn_move(ctx, job, position, now)
    fleet = ctx.learning.fleet(job.model)
    s_per_place = fleet.s_per_place()
    gen_start_at, started_after = job.gen_start_at, job.started_after
    if gen_start_at is None and seen.head_since is not None:
        # First seen at the head: it started after the last answer that showed it queued, about
        # when that answer's place in line came up (tasks/pacing/poll_value.py), and at the
        # earliest just after that answer (tasks/pacing/aim.py).
        start = poll_value.generation_start(candidate(job), now, s_per_place)
        gen_start_at = now if start is None else min(now, start)
        started_after = job.seen_at if job.seen_at is not None else now
    aimed_s = aim.wanted_s(
        progress,
        generating_s=None if position or started_after is None else now - started_after,
        s_per_place=s_per_place,
        gens=poll_value.Generations(fleet.generation_s),
        interval_s=interval_s,
    )
    delay_s = schedule.next_poll_delay_s(
        progress,
        interval_s=interval_s,
        max_interval_s=max_interval_s,
        now=now,
        deadline_at=deadline_at,
        aimed_s=aimed_s,
    )
    if delay_s is None:
        return fail(
            ctx, job.job_id, errors.DeadlineExceeded("still pending at the deadline"), lease=held
        )
    if pending.status not in PENDING_STATUSES:
        # Neither a pending word nor a terminal one (tasks/nanogpt/parsing.py): polled on, but said.
        log.warning(
            "job %s: status %r is not documented; treated as pending", job.job_id, pending.status
        )
    lease, seq = held
    # Parked in Redis, the next poll is recorded in the same atomic step as the lease moves,
    # and the reconciler need not look at the job before its deadline (tasks/sweeps/granting.py).
    if not ctx.jobs.advance(
        job.job_id,
        lease,
        seq,
        {
            "last_status": pending.status,
            "request_id": pending.request_id,
            "queue_position": position,
            "queue_first_position": seen.first_position,
            "queue_first_seen_at": seen.first_seen_at,
            "head_since": seen.head_since,
            "next_poll_at": now + delay_s,
            "seen_at": now,
            "gen_start_at": gen_start_at,
            "started_after": started_after,
        },
        check_at=deadline_at,
        park_at=now + delay_s,
        attempt=attempt,
        # No place in line (generating, or not said): the last one seen no longer holds.
        drop=("queue_position",) if position is None else (),
    ):
        return job.job_id
    eta_s = queue_eta_s(progress)
    publish_progress(ctx, job.job_id, Status.POLLING, queue_position=position, eta_s=eta_s)
    return job.job_id


def candidate(job: Job) -> poll_value.Candidate:
    """What the releaser ranks a parked poll by, from its job record."""
    return poll_value.Candidate(
        job_id=job.job_id,
        seen_at=job.seen_at,
        queue_position=job.queue_position,
        first_position=job.queue_first_position,
        first_seen_at=job.queue_first_seen_at,
        gen_start_at=job.gen_start_at,
        deadline_at=job.deadline_at,
        model=job.model,
    )


def _learn_generation(ctx: Ctx, job: Job, now: float) -> None:
    """Keep how long this job's generation took, for aiming polls (tasks/pacing/aim.py) and
    ranking them (tasks/pacing/poll_value.py): counted from its estimated start, it finished
    after the last answer that showed it pending (or its acceptance; before its start if that
    answer showed it queued: it said nothing of the generation) and by this one
    (tasks/pacing/censoring.py)."""
    if job.seen_at is None:
        return
    start = poll_value.generation_start(
        candidate(job), now, ctx.learning.fleet(job.model).s_per_place()
    )
    if start is None:
        return
    ctx.learning.record_finished(job.model, job.seen_at - start, now - start)


def _learn_move(ctx: Ctx, job: Job, position: int | None, now: float) -> None:
    """Keep where in line the job is, and the queue's speed if this answer shows the job moved
    up since the last one and is still queued (a job that left the queue started somewhere in
    between: no measure)."""
    if position:
        ctx.learning.record_position(job.model, position, now)
    before = job.queue_position
    if before and position and position < before and job.seen_at is not None:
        ctx.learning.record_move(job.model, before - position, now - job.seen_at)
