"""Celery configuration derived from :class:`Settings`; every choice says why."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from tasks import logctx, names
from workers.settings import Settings

# Redis redelivers an unacked message after this long. It must exceed every countdown we set
# (else the message is delivered twice: kombu #337) plus the longest task; an hour is Celery's
# default and is far above our waits unless the operator raises them.
MIN_VISIBILITY_TIMEOUT_S = 3600


def longest_countdown_s(s: Settings) -> float:
    """The longest wait any task is ever re-queued with."""
    return max(s.poll_max_interval_s, s.retry_max_delay_s, s.webhook_max_retry_delay_s)


def celery_config(s: Settings) -> dict[str, Any]:
    """The ``app.conf`` mapping for these settings."""
    queues = [Queue(name) for name in dict.fromkeys(names.QUEUES.values())]
    return {
        "broker_url": s.broker_url,
        "result_backend": s.result_backend,
        # Without a result backend there is nowhere to put results: do not try.
        "task_ignore_result": s.result_backend is None,
        "result_expires": 86_400,
        # JSON only: pickle would let anyone who can publish run code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # A worker started without -Q consumes every queue listed here.
        "task_queues": queues,
        "task_default_queue": names.SUBMIT_QUEUE,
        "task_routes": {task: {"queue": queue} for task, queue in names.QUEUES.items()},
        # Ack after the task ran, and re-queue it if the worker process died: the job record
        # turns the resulting repeat into a no-op.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Polls are short and I/O bound; a small prefetch keeps work spread across workers.
        "worker_prefetch_multiplier": 4,
        "broker_transport_options": {
            "visibility_timeout": max(MIN_VISIBILITY_TIMEOUT_S, int(4 * longest_countdown_s(s))),
        },
        # Keep trying the broker forever, at start and after a restart, instead of exiting.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Events for Flower: every task shows with its name, state and short arguments.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # The same variables the Procfile passes as flags, so a container needs no shell.
        "worker_concurrency": s.worker_concurrency,
        "beat_schedule_filename": str(s.beat_schedule_file),
        # SIGTERM is a warm shutdown: running tasks finish, reserved and countdown messages go
        # back to Redis, the worker exits (deploy/README.md, "Stopping workers"). The soft
        # shutdown only acts on the cold path (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT,
        # which Procfile platforms need because they signal every process in the group): it
        # gives running tasks a bounded time, then cancels and re-queues them (acks_late).
        "worker_soft_shutdown_timeout": s.worker_soft_shutdown_timeout_s,
        # Off: with Celery 5.7 and Redis the countdown messages a worker holds are restored on a
        # cold shutdown without this wait (tests/integration/test_shutdown.py), and turning it on
        # would make every idle worker sleep the whole timeout before exiting.
        "worker_enable_soft_shutdown_on_idle": False,
        # Job and task ids on every line our code logs (tasks/logctx.py puts them on records).
        "worker_log_format": logctx.TEXT_FORMAT,
    }
