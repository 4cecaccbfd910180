"""Identical requests served once (TTS_REUSE_TTL > 0, and ``reuse`` left True by the caller).

Before its POST (and before it takes a budget token), a submit asks the reuse index
(:mod:`tasks.record.reuse`) about its request's key (:mod:`tasks.nanogpt.fingerprint`):

* a job with the same key **completed** within TTS_REUSE_TTL: this job ends ``completed`` with
  that job's stored audio, ``reused_from`` naming it and ``cost`` 0, without calling NanoGPT;
  its own outcome and webhook follow as for every job;
* one is **in flight** (the leader): this job follows it, parked in Redis (no worker slot, no
  message); when the leader has an outcome its notify step wakes the followers
  (:func:`wake`), each re-sent as its own submit, which decides again: the leader completed,
  so it reuses its audio; the leader failed with a verdict on the content
  (:data:`SHARED_CODES`), so it ends with the same error (``reused_from`` too); the leader
  failed for any other reason (a timeout, ``SUBMIT_UNCONFIRMED``, a cancel, its deadline), so
  one follower leads and makes its own POST, the others follow it;
* otherwise this job **leads**: it makes the POST as without reuse.

A follower is watched by the reconciler at most :data:`FOLLOWER_RECHECK_S` apart: a wake-up
lost with a dead worker costs that much delay, never the job. Its wait is bounded by its
leader's own deadlines, and does not count against its submit's: a follower that takes over
from a failed leader gets TTS_POLL_TIMEOUT from then for its own POST (else a leader that timed
out would take every follower with it).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tasks import metrics
from tasks.nanogpt import fingerprint, validation
from tasks.record.contract import F
from tasks.record.jobs import Job
from tasks.record.reuse import Decision, Verdict
from tasks.record.states import Status, submit_to_resend
from tasks.steps import progress
from tasks.steps.base import Delivery
from tasks.steps.context import Ctx
from tasks.steps.outcomes import check_at, ended

log = logging.getLogger(__name__)

#: The leader's failures that are about the content, not about this attempt: every identical
#: request would meet them, so its followers end with them instead of paying to hear them again.
SHARED_CODES = frozenset({"CONTENT_POLICY_VIOLATION"})
#: The longest a follower waits between two checks by the reconciler (its submit re-sent,
#: deciding again). Its wake-up comes with its leader's outcome; this only bounds the delay of
#: one lost with a dead worker, at one message per follower per minute.
FOLLOWER_RECHECK_S = 60.0


def wanted(ctx: Ctx, request: validation.SubmitRequest) -> bool:
    """Whether this submit may be answered by another's audio."""
    return ctx.settings.reuse_ttl_s > 0 and request.reuse


def hold_s(ctx: Ctx) -> float:
    """How long the index keeps a key: a leader's whole run (its submit's and its polls'
    deadlines, a download, the recovery grace), then TTS_REUSE_TTL of reuse."""
    s = ctx.settings
    run_s = 2 * s.poll_timeout_s + s.download_timeout_s + s.recovery_grace_s
    return run_s + s.reuse_ttl_s


def serve(
    ctx: Ctx, d: Delivery, job: Job, request: validation.SubmitRequest, deliveries: int
) -> Job | None:
    """Answer, or park, the submit of ``job`` (``submitting``, this message's) from the reuse
    index. None when this message is done with (reused, shared, following); else the job to
    make its own POST for (it leads, or reuse is off): a follower that takes over from a
    failed leader with a new submit deadline (its wait does not count against it)."""
    if not wanted(ctx, request):
        return job
    s = ctx.settings
    now = ctx.clock()
    decision = ctx.jobs.decide_reuse(
        job.job_id,
        d.task_id,
        fingerprint.reuse_key(request, job.tenant),
        ttl_s=s.reuse_ttl_s,
        hold_s=hold_s(ctx),
        check_at=now + FOLLOWER_RECHECK_S,
        deliveries=deliveries,
        shared=SHARED_CODES,
        deadline_at=now + s.poll_timeout_s,
        record_ttl_s=s.poll_timeout_s + s.job_ttl_s,
    )
    if decision.verdict == Verdict.FOLLOW:
        if decision.joined:
            log.info(
                "job %s: an identical request is in flight (job %s); waiting for it",
                job.job_id,
                decision.source,
            )
            metrics.reuse("followed")
        return None
    if decision.verdict in (Verdict.REUSED, Verdict.SHARED):
        _answer(ctx, d, job.job_id, decision)
        return None
    if decision.deadline_at is not None and decision.deadline_at != job.deadline_at:
        log.info("job %s: its identical request in flight failed; sending its own", job.job_id)
        return dataclasses.replace(job, deadline_at=decision.deadline_at)
    return job


def _answer(ctx: Ctx, d: Delivery, job_id: str, decision: Decision) -> None:
    """End the job with its source's audio (or verdict): no NanoGPT call, ``cost`` 0."""
    source = decision.source
    given = decision.outcome or {}
    error: dict[str, Any] = given.get("error") or {}
    if decision.verdict == Verdict.REUSED:
        outcome = {"type": "tts.completed", "audio": given.get("audio"), "reused_from": source}
    else:
        outcome = {"type": "tts.failed", "error": error, "reused_from": source}
    if not ctx.jobs.settle(
        job_id,
        outcome,
        guards={F.STATUS: Status.SUBMITTING, F.OWNER: d.task_id},
        check_at=check_at(ctx, 0),
        record={"cost": 0.0},
    ):
        return  # ended meanwhile (a cancel), or by this message's earlier run
    if decision.verdict == Verdict.REUSED:
        log.info("job %s completed with the audio of job %s (reused)", job_id, source)
        ended(ctx, job_id, "completed")
        metrics.reuse("reused")
        progress.publish(ctx, job_id, Status.COMPLETED)
    else:
        code = str(error.get("code", ""))
        log.info("job %s failed with the verdict of job %s: %s", job_id, source, code)
        ended(ctx, job_id, code)
        metrics.reuse("shared")
        progress.publish(ctx, job_id, Status.FAILED)
    ctx.dispatch.notify(job_id)


def wake(ctx: Ctx, job: Job) -> None:
    """The leader ``job`` has its outcome: its followers are due again (in one script), and
    their submits are re-sent at once. A re-send that fails is the reconciler's, within the
    recovery grace."""
    if not job.reuse_key or job.reuse_leader:
        return  # never led: nobody follows it
    woken = ctx.jobs.wake_followers(
        job.reuse_key, job.job_id, check_at=ctx.clock() + ctx.settings.recovery_grace_s
    )
    for follower_id in woken:
        follower = ctx.jobs.get(follower_id)
        resend = submit_to_resend(follower) if follower is not None else None
        if resend is None:
            continue
        request, owner = resend
        try:
            ctx.dispatch.submit(request, task_id=owner)
        except Exception as exc:  # the broker's; the reconciler sends it within the grace
            log.warning("job %s: follower %s's wake-up not sent (%s)", job.job_id, follower_id, exc)
    if woken:
        log.info("job %s: woke %d identical request(s) waiting on it", job.job_id, len(woken))
