"""Worker life-cycle hooks: refuse to start misconfigured, reset per-process state after fork,
report received tasks to Flower without the secrets a caller may have put in them, serve
metrics, put job and task ids on log lines, and run the reconciler and the poll releaser.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import redis
from celery import Task, signals

from tasks import logctx, redact
from tasks.adapters import acks, received, runtime
from tasks.config import celery_config
from tasks.config.settings import Settings, get_settings, retired_set
from workers import log_redaction, metrics_server, poll_releaser, reconciler

log = logging.getLogger("workers")

# Set in the worker main process when TTS_METRICS_PORT is set; None otherwise.
_metrics: metrics_server.MetricsEndpoint | None = None


class ConfigurationError(SystemExit):
    """Stops the worker before it consumes anything, with a message for the operator."""


def check_worker_settings(**_: Any) -> None:
    """A worker without an API key would fail every job: refuse to start instead."""
    s = get_settings()
    if s.api_key is None:
        message = "NANOGPT_API_KEY is not set: the worker cannot call NanoGPT and will not start."
        log.critical(message)
        raise ConfigurationError(f"tts-worker: {message}")
    if s.webhook_secret is None:
        log.warning("TTS_WEBHOOK_SECRET is not set: webhooks will be sent unsigned.")
    for name, why in retired_set().items():
        log.warning("%s is set, but no longer read: %s.", name, why)
    check_base_url(s)
    check_storage_extra(s)
    check_job_ttl(s)
    check_job_store(s)


def _refuse(message: str) -> None:
    log.critical(message)
    raise ConfigurationError(f"tts-worker: {message}")


def check_job_ttl(s: Settings) -> None:
    """A job's record (its identity) must outlive every copy of its messages: a copy that comes
    back after the record expired would make a new job, and POST the text again."""
    floor_s = celery_config.redelivery_window_s(s)
    if s.job_ttl_s < floor_s:
        broker = (
            "RabbitMQ's consumer timeout"
            if s.broker_kind == "amqp"
            else ("the Redis transport's visibility timeout")
        )
        _refuse(
            f"TTS_JOB_TTL is {s.job_ttl_s} s, below the {floor_s} s in which a message can "
            f"still come back ({broker} plus the longest countdown): a redelivered message "
            "would find no record, start the job again and POST its text twice. Raise "
            f"TTS_JOB_TTL to at least {floor_s}. The worker will not start."
        )


# Redis' own advice for data that must not vanish: refuse writes when full, never evict.
SAFE_EVICTION_POLICY = "noeviction"
# Each write on disk before Redis answers it: a crash of the job store then loses nothing a
# worker already acted on (everysec can lose the last second; see README, "Durability").
DURABLE_APPENDFSYNC = "always"


def check_job_store(s: Settings) -> None:
    """The job store's configuration, read once at start. One that evicts keys when full
    (``allkeys-*``, or ``volatile-*``, which takes job records since they all have a TTL) loses
    jobs, and with them their identity: refuse to start. One that keeps no durable AOF: a
    warning (:func:`_warn_unless_durable`). When the policy cannot be read (CONFIG denied by
    an ACL, renamed on a managed service), say so and start: the operator must check it."""
    client = redis.Redis.from_url(
        s.redis_url,
        decode_responses=True,
        socket_timeout=runtime.REDIS_TIMEOUT_S,
        socket_connect_timeout=runtime.REDIS_TIMEOUT_S,
        retry=runtime.no_resend(),
    )
    where = redact.redact_url(s.redis_url)
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        durability = {
            name: client.config_get(name).get(name) for name in ("appendonly", "appendfsync")
        }
    except redis.ResponseError as exc:  # NOPERM from an ACL, or CONFIG renamed away
        log.warning(
            "cannot read maxmemory-policy of the job store %s (%s): make sure it is %r, or a "
            "full Redis will evict job records",
            where,
            str(exc).split("\n")[0][:200],
            SAFE_EVICTION_POLICY,
        )
        return
    except redis.RedisError as exc:
        log.warning("cannot reach the job store %s to check its maxmemory-policy: %s", where, exc)
        return
    finally:
        client.close()
    _warn_unless_durable(where, durability)
    if policy is not None and policy != SAFE_EVICTION_POLICY:
        _refuse(
            f"the job store {where} has maxmemory-policy {policy}: when full it would evict job "
            "records, and a job whose record vanished is lost, or run (and paid for) twice. "
            f'Set maxmemory-policy {SAFE_EVICTION_POLICY} (see the README, "Sizing Redis"). '
            "The worker will not start."
        )


def _warn_unless_durable(where: str, config: dict[str, str | None]) -> None:
    """A job store that may come back from a crash without its last writes can make a job in
    flight POST (and bill) twice or be announced twice (README, "Durability"). A warning, not a
    refusal: the most common set-up, an app's own Redis shared with its Celery, keeps no AOF,
    and its operator may accept that risk knowingly."""
    appendonly, appendfsync = config.get("appendonly"), config.get("appendfsync")
    if appendonly == "yes" and appendfsync == DURABLE_APPENDFSYNC:
        return
    kept = "no AOF" if appendonly != "yes" else f"appendfsync {appendfsync}"
    log.warning(
        "the job store %s keeps %s: if it crashes it comes back without its last writes, and a "
        "job in flight then may be POSTed (billed) twice or announced twice. Set appendonly yes "
        'and appendfsync %s for the job store (see the README, "Durability")',
        where,
        kept,
        DURABLE_APPENDFSYNC,
    )


def check_base_url(s: Settings) -> None:
    """NANOGPT_BASE_URL gets the API key and the texts in every request: https only, unless
    its host is in TTS_TRUSTED_HOSTS (a simulator on loopback, a sidecar proxy)."""
    try:
        parts = urllib.parse.urlsplit(s.base_url)
        host = (parts.hostname or "").lower()
    except ValueError:
        parts, host = None, ""
    if parts is not None and host and parts.scheme == "https":
        return
    if parts is not None and host and parts.scheme == "http" and host in s.trusted_hosts:
        return
    shown = redact.redact_url(s.base_url)
    message = (
        f"NANOGPT_BASE_URL {shown} is not https: the API key would travel in clear text. Use "
        "https, or list its host in TTS_TRUSTED_HOSTS. The worker will not start."
    )
    log.critical(message)
    raise ConfigurationError(f"tts-worker: {message}")


# What an operator types to fix a worker told to store in S3 without boto3.
S3_EXTRA_HINT = "pip install 'tts-worker[s3]'"


def check_storage_extra(s: Settings) -> None:
    """A worker told to store audio in S3 needs the ``s3`` extra (boto3): say so at start,
    not as an ImportError in the first download, after NanoGPT has been paid."""
    if s.storage.kind != "s3":
        return
    try:
        # Imported here, in the main process before the pool forks: the children share it.
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError as exc:
        message = (
            f"TTS_STORAGE_URL is {s.storage_url} but boto3 is not installed: install the s3 "
            f"extra ({S3_EXTRA_HINT}). The worker will not start."
        )
        log.critical(message)
        raise ConfigurationError(f"tts-worker: {message}") from exc


def redact_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """Mask every secret of the settings (:func:`log_redaction.secrets_of`) in every line the
    worker logs."""
    log_redaction.install(log_redaction.secrets_of(get_settings()), [logger] if logger else [])


def reset_process_state(**_: Any) -> None:
    # Sockets opened before the fork must not be shared by pool processes.
    runtime.reset()


def redact_received(request: Any = None, **_: Any) -> None:
    """Rewrite the argument text that the worker's ``task-received`` event carries.

    An app that sends by name ships Celery's default ``argsrepr``/``kwargsrepr``: up to 1 KiB of
    text and the whole ``notify_url``, query token included. The worker forwards that text in
    its ``task-received`` event, which Flower stores and shows; this handler runs just before
    the event is sent (celery/worker/strategy.py) and puts our redacted text in its place.
    Celery offers no public setter, hence the private attributes.
    """
    if request is None:
        return
    request._argsrepr = redact.args_repr(request.args or ())
    request._kwargsrepr = redact.kwargs_repr(request.kwargs or {})


def record_received(request: Any = None, **_: Any) -> None:
    """Give the job a caller's message starts a record as soon as the worker holds it
    (:mod:`tasks.adapters.received`), so a worker that dies before running it loses nothing."""
    if request is None:
        return
    try:
        start_at = received.eta_s(request.eta)
        received.on_received(
            runtime.context(),
            request.name,
            request.id,
            request.args or (),
            request.kwargs or {},
            start_at=start_at,
        )
    except Exception as exc:
        # The consumer must go on, and the message is still safe: the task records the job
        # first thing when it runs (the same accept code), and a job-store error there is a
        # retry of this very message, never an ack (tasks/adapters/acks.py). A worker that dies
        # or loses its broker before running it leaves the message in kombu's unacked entries
        # on Redis, where the reconciler looks for jobs with no record (workers/orphans.py);
        # RabbitMQ gives it back when the channel closes.
        if acks.store_unavailable(exc):
            log.warning(
                "recording received task %s failed: job store unavailable: %s", request.id, exc
            )
        else:
            log.exception("recording received task %s failed", request.id)


def prepare_metrics(**_: Any) -> None:
    """Before the pool forks: give this worker its own multiprocess metrics directory."""
    global _metrics
    if get_settings().metrics_port is not None and _metrics is None:
        _metrics = metrics_server.prepare()


def serve_metrics(**_: Any) -> None:
    """Once the worker consumes: serve ``/metrics`` from the main process."""
    s = get_settings()
    if _metrics is not None and _metrics.server is None and s.metrics_port is not None:
        _metrics.serve(s.metrics_host, s.metrics_port)


def stop_metrics(**_: Any) -> None:
    global _metrics
    if _metrics is not None:
        _metrics.close()
        _metrics = None


def forget_process(pid: int | None = None, **_: Any) -> None:
    """A pool process exits: its live gauges go; its counters stay in the sum."""
    if pid is not None:
        metrics_server.mark_process_dead(pid)


def configure_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """Job and task ids on every record; one JSON object per line with TTS_LOG_FORMAT=json."""
    logctx.install_record_factory()
    if logger is not None and get_settings().log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(logctx.JsonFormatter())


def task_started(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:  # type: ignore[type-arg]
    logctx.start_task(task_id, task.name if task is not None else None)


def task_ended(**_: Any) -> None:
    logctx.clear()


def connect() -> None:
    signals.worker_init.connect(check_worker_settings, weak=False)
    signals.worker_init.connect(prepare_metrics, weak=False)
    signals.worker_ready.connect(serve_metrics, weak=False)
    signals.worker_shutdown.connect(stop_metrics, weak=False)
    signals.worker_process_init.connect(reset_process_state, weak=False)
    signals.after_setup_logger.connect(redact_logs, weak=False)
    signals.after_setup_task_logger.connect(redact_logs, weak=False)
    # The reconciler runs in the worker's main process, next to the consumer.
    signals.worker_ready.connect(reconciler.start, weak=False)
    signals.worker_shutdown.connect(reconciler.stop, weak=False)
    # So does the releaser of the jobs waiting in Redis.
    signals.worker_ready.connect(poll_releaser.start, weak=False)
    signals.worker_shutdown.connect(poll_releaser.stop, weak=False)
    signals.task_received.connect(redact_received, weak=False)
    signals.task_received.connect(record_received, weak=False)
    signals.worker_process_shutdown.connect(forget_process, weak=False)
    signals.after_setup_logger.connect(configure_logs, weak=False)
    signals.after_setup_task_logger.connect(configure_logs, weak=False)
    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_ended, weak=False)
