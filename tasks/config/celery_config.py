"""Celery configuration derived from :class:`Settings`; every choice says why."""

from __future__ import annotations

import math
from typing import Any

from kombu import Exchange, Queue

from tasks import logctx, names
from tasks.config.settings import Settings

# Redis redelivers an unacked message after this long. It must exceed every countdown we set
# (else the message is delivered twice: kombu #337) plus the longest task; an hour is Celery's
# default and is far above our waits unless the operator raises them.
MIN_VISIBILITY_TIMEOUT_S = 3600

# The exchange every queue is bound to on RabbitMQ. Topic, because Celery's native delayed
# delivery hands a due message back by routing key ("#.<queue>") through the queue's exchange,
# and skips queues on a direct exchange (their countdowns would then wait in the worker).
AMQP_EXCHANGE = "tts"
# On the native-delay path a delay is a whole number of seconds, at least this many: Celery
# writes int(countdown) into the routing key (1.9 s would leave after 1 s and then wait in the
# worker for its ETA) and refuses anything below one second with ValueError.
MIN_NATIVE_DELAY_S = 1
# Beyond its POST's claim, what a submit may spend before the claim (the budget, the record)
# and after the answer (recording it, publishing the next step): Redis and broker round trips.
SUBMIT_TIME_SLACK_S = 30.0


# Beyond the HTTP timeouts and the audio wall clock, how long a POST's claim lasts: the time
# between the claim and the POST, and between the answer and recording it.
POST_LEASE_SLACK_S = 5.0


def post_claim_s(*, connect_s: float, read_s: float, audio_s: float) -> float:
    """How long one POST (and reading a 200 answer's audio) can take, at most: its connect
    and read timeouts, the audio's wall clock, and :data:`POST_LEASE_SLACK_S`. The submit's
    claim lasts this long, and its hard time limit must exceed it."""
    return connect_s + read_s + audio_s + POST_LEASE_SLACK_S


# How long one publish may wait (seconds) for the socket and, on RabbitMQ, for the broker's
# confirm (``confirm_publish``). Without it a publish to a RabbitMQ in memory or disk alarm
# (``connection.blocked``: RabbitMQ stops reading from a publishing connection) waits for its
# confirm as long as the alarm lasts, holding the task, the releaser or the reconciler that
# sent it (tests/reliability/test_broker_faults.py). A quorum queue confirms in milliseconds
# when all is well.
PUBLISH_TIMEOUT_S = 5.0
# Attempts after the first: one, on a fresh connection (a broker that restarted leaves the pool's
# connections dead). Then ``OperationalError``, which a task meets as a broker outage
# (tasks/adapters/acks.py). Celery's default (3) made a publish to a blocked node take 30 s.
PUBLISH_MAX_RETRIES = 1
# The longest any other read or write on a broker connection may block (seconds). On RabbitMQ
# kombu's transport options ``read_timeout``/``write_timeout`` (the socket's SO_RCVTIMEO and
# SO_SNDTIMEO): above all, closing the channel and connection of a publish that timed out waits
# for a ``close-ok`` that a blocked node never sends (the producer pool's clean-up hung as long
# as the alarm); a failed publish to a blocked node so ends after about 20 s: two attempts and
# the two closes. On Redis ``socket_timeout``/``socket_connect_timeout`` (every command).
BROKER_SOCKET_TIMEOUT_S = 5.0


def publish_options() -> dict[str, Any]:
    """The options every publish of ours passes (``send_task``/``apply_async``): kombu's
    ``timeout`` (the socket write) and ``confirm_timeout`` (the broker's confirm), both
    :data:`PUBLISH_TIMEOUT_S`, and :data:`PUBLISH_MAX_RETRIES`. The Redis transport ignores
    the timeouts: its socket timeout (:data:`BROKER_SOCKET_TIMEOUT_S`) bounds it."""
    return {
        "timeout": PUBLISH_TIMEOUT_S,
        "confirm_timeout": PUBLISH_TIMEOUT_S,
        "retry_policy": {"max_retries": PUBLISH_MAX_RETRIES},
    }


# RabbitMQ's default consumer_timeout (seconds, 30 min since 3.8.15): a consumer that holds a
# delivery unacknowledged longer has its channel closed, and the message is delivered again.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800


def longest_countdown_s(s: Settings) -> float:
    """The longest wait any task is ever re-queued with."""
    return max(s.poll_max_interval_s, s.retry_max_delay_s, s.webhook_max_retry_delay_s)


def submit_time_limit_s(s: Settings) -> float:
    """The submit's hard time limit: longer than its POST's claim (the HTTP timeouts and the
    audio wall clock), so a slow answer is ended by those timeouts and recorded, never killed
    mid-read by Celery (which would leave the job to end ``SUBMIT_UNCONFIRMED``). Set through
    ``task_annotations``: the decorator's ``time_limit`` is fixed before the settings exist."""
    claim_s = post_claim_s(
        connect_s=s.http_connect_timeout_s,
        read_s=s.http_read_timeout_s,
        audio_s=s.download_timeout_s,
    )
    return claim_s + SUBMIT_TIME_SLACK_S


def visibility_timeout_s(s: Settings) -> int:
    """Seconds after which the Redis transport gives an unacknowledged message back."""
    return max(MIN_VISIBILITY_TIMEOUT_S, int(4 * longest_countdown_s(s)))


def redelivery_window_s(s: Settings) -> int:
    """How long after a job's record was last written a message of that job can still arrive
    (seconds): the floor of ``TTS_JOB_TTL``, so a late copy meets the record and not a new job.

    A message taken before the job ended (a submit that ran, a countdown held for later) but
    never acknowledged (its worker was SIGKILLed, lost the broker) comes back:

    * Redis transport: once the visibility timeout has passed since it was taken (and the
      worker holds countdown messages as taken ones, so they are inside that timeout too);
    * RabbitMQ: at once when the channel dies, or after ``consumer_timeout`` (its default,
      :data:`RABBITMQ_CONSUMER_TIMEOUT_S`) when the consumer hangs; a countdown waits in the
      broker's delay queues for at most the longest countdown before it is routed.

    Plus the longest countdown on either: a copy given back may still wait out its own delay.
    """
    held_s = RABBITMQ_CONSUMER_TIMEOUT_S if s.broker_kind == "amqp" else visibility_timeout_s(s)
    return held_s + math.ceil(longest_countdown_s(s))


def broker_countdown_s(delay_s: float, s: Settings) -> float:
    """The countdown to publish for a wait of ``delay_s`` seconds on this broker.

    On RabbitMQ (quorum queues, so Celery's native delayed delivery) a positive wait becomes
    whole seconds, rounded up and at least :data:`MIN_NATIVE_DELAY_S`: the broker then holds the
    message for exactly the countdown its ETA says, never less (a server's Retry-After stays a
    floor). Zero or less means "now". Other brokers take the wait as it is.
    """
    if delay_s <= 0:
        return 0
    if s.broker_kind != "amqp":
        return delay_s
    return max(MIN_NATIVE_DELAY_S, math.ceil(delay_s))


def task_queues(s: Settings) -> list[Queue]:
    """One queue per step (tasks/names.py); on RabbitMQ quorum queues on a topic exchange.

    Plus Celery's default queue when ``TTS_CONSUME_DEFAULT_QUEUE`` is on (:func:`default_queue`).
    """
    queue_names = dict.fromkeys(names.QUEUES.values())
    extra = [default_queue()] if s.consume_default_queue else []
    if s.broker_kind != "amqp":
        return [Queue(name) for name in queue_names] + extra
    # Quorum: replicated and durable, and what switches Celery to native delayed delivery
    # (celery/utils/quorum_queues.py looks for x-queue-type=quorum among the task queues).
    exchange = Exchange(AMQP_EXCHANGE, type="topic")
    return [
        Queue(name, exchange, routing_key=name, queue_arguments={"x-queue-type": "quorum"})
        for name in queue_names
    ] + extra


def default_queue() -> Queue:
    """Celery's default queue, declared exactly as a client with no configuration declares it:
    durable, on a direct exchange of its own name.

    On RabbitMQ both sides must declare it alike (a second declaration with other arguments is
    refused), so it stays a classic queue on a direct exchange, unlike ours: a countdown re-sent
    to it (a retry of a task that came this way) waits in the worker, not in RabbitMQ.
    """
    name = names.CELERY_DEFAULT_QUEUE
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def beat_schedule(s: Settings) -> dict[str, dict[str, Any]]:
    """What celery beat sends: the audio clean-up every ``TTS_CLEANUP_INTERVAL`` while
    ``TTS_AUDIO_RETENTION`` is set; nothing otherwise (beat then need not run).

    Recovery is not here: every worker runs the reconciler on a timer (workers/reconciler.py).
    """
    if s.audio_retention_days is None:
        return {}
    return {
        names.CLEANUP_AUDIO: {
            "task": names.CLEANUP_AUDIO,
            "schedule": s.cleanup_interval_s,
            # The workers that download mount the audio directory. A sweep that waited in the
            # queue and runs just before the next one costs a directory scan and removes nothing.
            "options": {"queue": names.QUEUES[names.CLEANUP_AUDIO]},
        }
    }


def _broker_options(s: Settings) -> dict[str, Any]:
    if s.broker_kind != "amqp":
        return {
            "broker_transport_options": {
                "visibility_timeout": visibility_timeout_s(s),
                # kombu's Redis transport waits forever on a silent socket by default: a
                # publish to a frozen or unreachable broker then held its task (or the
                # releaser, the reconciler) as long as the broker was gone. The consumer's
                # BRPOP asks for an answer within a second, far inside this.
                "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
                "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_S,
            },
        }
    return {
        # A publish returns once RabbitMQ has taken the message (on a quorum queue: once a
        # majority of nodes has it), so a lost next step raises in the task that sent it.
        # RabbitMQ has no visibility timeout: an unacked message returns when its channel dies.
        # Every read and write on the connection is bounded (BROKER_SOCKET_TIMEOUT_S): the
        # worker's consumer reads only when the socket is readable, so an idle one is not cut.
        "broker_transport_options": {
            "confirm_publish": True,
            "read_timeout": BROKER_SOCKET_TIMEOUT_S,
            "write_timeout": BROKER_SOCKET_TIMEOUT_S,
        },
        "task_default_exchange": AMQP_EXCHANGE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": names.SUBMIT_QUEUE,
        # A queue created on the fly (a worker's -Q with a name not in task_queues) is made
        # like ours, so its countdowns take the native-delay path too.
        "task_create_missing_queue_type": "quorum",
        "task_create_missing_queue_exchange_type": "topic",
        # Celery's own delayed-delivery queues (celery_delayed_0..27) are quorum as well (its
        # default, pinned here so that a change of default cannot change our topology).
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def celery_config(s: Settings) -> dict[str, Any]:
    """The ``app.conf`` mapping for these settings."""
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
        "task_queues": task_queues(s),
        # Hands a task of another app back to the broker instead of discarding it.
        "worker_consumer": "workers.consumer:Consumer",
        "task_default_queue": names.SUBMIT_QUEUE,
        "task_routes": {task: {"queue": queue} for task, queue in names.QUEUES.items()},
        # Ack after the task ran, and re-queue it if the worker process died: the job record
        # turns the resulting repeat into a no-op.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that failed is not done: rejected, never acked (a hard time limit re-queues).
        # Our tasks turn their own failures into retries (tasks/adapters/acks.py); this catches the
        # rest.
        "task_acks_on_failure_or_timeout": False,
        # Polls are short and I/O bound; a small prefetch keeps work spread across workers.
        # On quorum queues Celery applies it per consumer (RabbitMQ has no global QoS there) and
        # cannot raise it for ETA messages it holds: why countdowns must wait in the broker.
        "worker_prefetch_multiplier": 4,
        "task_annotations": {names.SUBMIT_TTS: {"time_limit": submit_time_limit_s(s)}},
        **_broker_options(s),
        # Keep trying the broker forever, at start and after a restart, instead of exiting.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Events for Flower: every task shows with its name, state and short arguments.
        "worker_send_task_events": True,
        # Celery's default (off) for the tasks the worker itself sends (the next poll, the
        # download, the webhook): Flower shows each of them from its task-received event, and a
        # task-sent event as well would cost the worker one more Redis round trip per poll
        # (bench row 2).
        "task_send_sent_event": False,
        "task_track_started": True,
        # The same variables the Procfile passes as flags, so a container needs no shell.
        "worker_concurrency": s.worker_concurrency,
        "beat_schedule_filename": str(s.beat_schedule_file),
        "beat_schedule": beat_schedule(s),
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
