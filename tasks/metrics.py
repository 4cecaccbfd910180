"""Prometheus metrics of the TTS pipeline: defined here, recorded by one call per outcome.

Pool processes write their values to files under ``PROMETHEUS_MULTIPROC_DIR``, which the worker
main process creates before the pool forks and reads when it serves ``/metrics``
(``workers/metrics_server.py``). Generic Celery metrics (tasks sent/succeeded, queue lengths,
workers up) are left to an exporter such as ``prometheus-exporter-celery``; these count what only
our code knows.

The metrics are built on first use, not at import: prometheus_client chooses between in-memory
and per-process file storage when it is first imported, and Celery imports the task modules before
the worker's init hook has set the directory.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

PollOutcome = Literal["pending", "completed", "failed", "retry"]
UpstreamCall = Literal["submit", "status"]
WebhookResult = Literal["delivered", "failed", "expired", "gone", "refused"]
ReuseResult = Literal["reused", "shared", "followed"]

# From "on time" to "a poll queue hours behind": the planned waits are 3-30 s by default.
POLL_LAG_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# Tenants a process labels by name; the ones it meets later count as "other". A tenant is the
# caller's name and each label value is a time series: a caller with a tenant per end user
# would otherwise grow Prometheus without bound.
MAX_TENANT_LABELS = 20
# The tenant label of a job that names none, and of the tenants past MAX_TENANT_LABELS.
NO_TENANT = "none"
OTHER_TENANTS = "other"
# Audio downloads are capped by TTS_DOWNLOAD_TIMEOUT (120 s by default).
DOWNLOAD_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class _Metrics:
    polls: Counter
    poll_lag: Histogram
    jobs: Counter
    download_bytes: Counter
    download_seconds: Histogram
    webhooks: Counter
    spend: Counter
    upstream_calls: Counter
    deferred: Counter
    lane_calls: Counter
    lane_deferred: Counter
    lane_jobs: Counter
    tokens_free: Gauge
    rate: Gauge
    progress_dropped: Counter
    unusable: Counter
    foreign: Counter
    reuse: Counter


@functools.cache
def _metrics() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return _Metrics(
        polls=Counter(
            "tts_polls",
            "Status calls to NanoGPT, by what they found (retry: a transient fault).",
            ["outcome"],
        ),
        poll_lag=Histogram(
            "tts_poll_lag_seconds",
            "How late a poll started: actual minus planned time (the job's next_poll_at).",
            buckets=POLL_LAG_BUCKETS_S,
        ),
        jobs=Counter(
            "tts_jobs_finished",
            "Jobs that reached their outcome: 'completed' or the public error code.",
            ["outcome"],
        ),
        download_bytes=Counter("tts_download_bytes", "Audio bytes stored."),
        download_seconds=Histogram(
            "tts_download_seconds",
            "Duration of audio downloads that were stored.",
            buckets=DOWNLOAD_BUCKETS_S,
        ),
        webhooks=Counter(
            "tts_webhook_attempts",
            "Webhook POSTs by result (failed: will be retried; expired: given up).",
            ["result"],
        ),
        spend=Counter(
            "tts_spend",
            "What NanoGPT said accepted submits cost, in the unit of their payment source.",
            ["model", "payment_source"],
        ),
        upstream_calls=Counter(
            "tts_upstream_calls",
            "NanoGPT calls made, by kind (submit, status), each within the fleet's budget.",
            ["kind"],
        ),
        deferred=Counter(
            "tts_budget_deferred",
            "Calls not made for want of budget (polls deferred, submits parked), by kind.",
            ["kind"],
        ),
        lane_calls=Counter(
            "tts_lane_calls",
            "NanoGPT calls made, by the job's priority and tenant (tasks/pacing/fairness.py).",
            ["priority", "tenant"],
        ),
        lane_deferred=Counter(
            "tts_lane_deferred",
            "Calls that waited for budget (polls deferred, submits parked), by the job's "
            "priority and tenant.",
            ["priority", "tenant"],
        ),
        lane_jobs=Counter(
            "tts_lane_jobs_finished",
            "Jobs that reached their outcome, by the job's priority and tenant and whether they "
            "completed or failed.",
            ["priority", "tenant", "result"],
        ),
        # Set by the releaser thread of each worker's main process; the latest reading wins.
        tokens_free=Gauge(
            "tts_budget_tokens",
            "NanoGPT calls the fleet's budget could make at once, as last read.",
            multiprocess_mode="mostrecent",
        ),
        rate=Gauge(
            "tts_budget_rate",
            "The budget's calls per second now (below TTS_UPSTREAM_RATE while lowered by 429s).",
            multiprocess_mode="mostrecent",
        ),
        progress_dropped=Counter(
            "tts_progress_dropped",
            "Progress entries not published because Redis refused them (tasks/steps/progress.py).",
        ),
        unusable=Counter(
            "tts_unusable_messages",
            "tts.* messages the worker could not use and could not announce by webhook, by "
            "reason (no_job_id, no_notify_url, unknown_task).",
            ["reason"],
        ),
        foreign=Counter(
            "tts_foreign_tasks",
            "Tasks of other apps that reached a worker, by what it did (requeued: handed back "
            "to the broker; discarded: on one of our own queues, where nobody else looks).",
            ["action"],
        ),
        reuse=Counter(
            "tts_reuse",
            "Submits served by an identical request (TTS_REUSE_TTL), by result (reused: a "
            "completed job's audio; shared: its leader's verdict on the content; followed: "
            "joined an identical request in flight).",
            ["result"],
        ),
    )


def poll(outcome: PollOutcome) -> None:
    """Count one status call by what it found."""
    _metrics().polls.labels(outcome).inc()


def poll_lag(planned_at: float | None, *, now: float | None = None) -> None:
    """Record how late a poll started against the time its job planned it for."""
    if planned_at is not None:
        started_at = time.time() if now is None else now
        # Clocks of two workers may disagree a little; early is "on time", not negative.
        _metrics().poll_lag.observe(max(0.0, started_at - planned_at))


def job_finished(outcome: str) -> None:
    """Count a job's outcome once: ``completed`` or its error code."""
    _metrics().jobs.labels(outcome).inc()


def downloaded(n_bytes: int, seconds: float) -> None:
    """Record one stored audio file: its size and how long fetching it took."""
    m = _metrics()
    m.download_bytes.inc(n_bytes)
    m.download_seconds.observe(seconds)


def webhook(result: WebhookResult) -> None:
    """Count one webhook attempt by its result."""
    _metrics().webhooks.labels(result).inc()


def spent(model: str, payment_source: str | None, cost: float | None) -> None:
    """Count what one accepted submit cost; call it once per job (a transition that returned
    True). Nothing is counted when NanoGPT did not say (inline audio)."""
    if cost is not None and cost >= 0:
        _metrics().spend.labels(model, payment_source or "unknown").inc(cost)


def upstream_call(kind: UpstreamCall) -> None:
    """Count one NanoGPT call about to be made (it had budget)."""
    _metrics().upstream_calls.labels(kind).inc()


def poll_deferred() -> None:
    """Count a poll that found no budget and waits again (not a retry)."""
    _metrics().deferred.labels("status").inc()


def submit_deferred() -> None:
    """Count a submit that found no budget and waits in line (not a retry)."""
    _metrics().deferred.labels("submit").inc()


_tenants: set[str] = set()


def tenant_label(tenant: str | None) -> str:
    """The label a tenant is counted under: its name for the first :data:`MAX_TENANT_LABELS`
    tenants this process meets, :data:`OTHER_TENANTS` after them."""
    if not tenant:
        return NO_TENANT
    if tenant in _tenants:
        return tenant
    if len(_tenants) < MAX_TENANT_LABELS:
        _tenants.add(tenant)
        return tenant
    return OTHER_TENANTS


def lane_call(priority: str, tenant: str | None) -> None:
    """Count one NanoGPT call made for a job of this lane."""
    _metrics().lane_calls.labels(priority, tenant_label(tenant)).inc()


def lane_deferred(priority: str, tenant: str | None) -> None:
    """Count one call of a job of this lane that waits for budget (a poll or a submit)."""
    _metrics().lane_deferred.labels(priority, tenant_label(tenant)).inc()


def lane_finished(priority: str, tenant: str | None, *, completed: bool) -> None:
    """Count one job of this lane that reached its outcome."""
    result = "completed" if completed else "failed"
    _metrics().lane_jobs.labels(priority, tenant_label(tenant), result).inc()


def budget(tokens_free: int, rate_per_s: float) -> None:
    """Record the budget as the releaser last read it."""
    m = _metrics()
    m.tokens_free.set(tokens_free)
    m.rate.set(rate_per_s)


def progress_dropped() -> None:
    """Count a progress entry Redis refused (the step went on)."""
    _metrics().progress_dropped.inc()


def unusable_message(reason: str) -> None:
    """Count a ``tts.*`` message that could not be used nor announced by webhook."""
    _metrics().unusable.labels(reason).inc()


def foreign_task(action: str) -> None:
    """Count a task of another app that reached this worker: ``requeued`` or ``discarded``."""
    _metrics().foreign.labels(action).inc()


def reuse(result: ReuseResult) -> None:
    """Count a submit the reuse index answered or parked (no NanoGPT call)."""
    _metrics().reuse.labels(result).inc()
