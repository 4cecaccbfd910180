"""The worker's consumer: a task of another app is handed back to its broker, never discarded.

Celery's consumer discards a message whose task name it does not know ("Received unregistered
task", ``Consumer.on_unknown_task``): no ``task_received`` hook sees it, because no request is
ever made for it. On a broker shared with an app whose own worker consumes Celery's default
queue ``celery``, a TTS worker consuming that queue too (``TTS_CONSUME_DEFAULT_QUEUE``, an
opt-in for a broker of our own) would take some of the app's tasks and lose them. So here:

* a task that is not ours (its name is not ``tts.*``) and came from a queue that is not ours is
  **rejected with requeue**: it goes back to the broker for the app's own worker, logged at
  WARNING and counted (``tts_foreign_tasks{action="requeued"}``); this worker then stops taking
  from that queue for :data:`FOREIGN_PAUSE_S`, so a queue of foreign tasks whose own worker is
  down is not spun through (take, hand back, take again) as fast as Redis answers;
* a foreign task that came on one of our own queues (someone routed it there; nobody else reads
  them) is discarded as Celery does, counted as ``discarded``;
* a ``tts.*`` name we do not know is discarded as Celery does (logged at ERROR), and counted
  in ``tts_unusable_messages{reason="unknown_task"}``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from tasks import metrics, names

log = logging.getLogger(__name__)

# How long a worker leaves a queue alone after handing a foreign task back: long enough that a
# queue holding only foreign tasks costs a few requeues a minute, short enough that our own tasks
# sent there (without queue=) wait seconds, not minutes.
FOREIGN_PAUSE_S = 10.0
# Our task names; anything else is another app's.
OWN_PREFIX = "tts."
OWN_QUEUES = frozenset(names.QUEUES.values())


def task_name(message: Any) -> str:
    """The task a message names (protocol 2 headers; protocol 1 body), or ``""``."""
    headers = message.headers or {}
    name = headers.get("task")
    if name is None:
        try:
            name = message.payload.get("task")
        except Exception:  # an undecodable body: Celery's own handler reports it
            name = None
    return str(name or "")


def task_id(message: Any) -> str:
    headers = message.headers or {}
    return str(headers.get("id") or "")


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, handing foreign tasks back instead of discarding them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paused: set[str] = set()

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A message naming a task this worker does not have (see the module docstring)."""
        name = task_name(message)
        queue = str((message.delivery_info or {}).get("routing_key") or "")
        if name.startswith(OWN_PREFIX):
            metrics.unusable_message("unknown_task")
            return super().on_unknown_task(body, message, exc)
        if queue in OWN_QUEUES:
            metrics.foreign_task("discarded")
            return super().on_unknown_task(body, message, exc)
        # celery-types does not declare the consumer's attributes: read them as Any.
        message.reject_log_error(log, getattr(self, "connection_errors", ()), requeue=True)
        metrics.foreign_task("requeued")
        log.warning(
            "task %s (%s) is not ours: handed back to the broker for its own worker; not "
            "taking from queue %r for %.0f s. A broker shared with another app: turn "
            "TTS_CONSUME_DEFAULT_QUEUE off (README, 'Sharing a broker').",
            task_id(message),
            name,
            queue,
            FOREIGN_PAUSE_S,
        )
        self._pause(queue)
        return None

    def _pause(self, queue: str) -> None:
        task_consumer: Any = getattr(self, "task_consumer", None)
        if queue in self._paused or task_consumer is None:
            return
        if not task_consumer.consuming_from(queue):
            return
        self._paused.add(queue)
        self.cancel_task_queue(queue)
        self.timer.call_after(FOREIGN_PAUSE_S, self._resume, (queue,))

    def _resume(self, queue: str) -> None:
        self._paused.discard(queue)
        try:
            self.add_task_queue(queue)
        except Exception:  # the connection is being re-established: it consumes the queues
            log.exception("resuming queue %r failed", queue)
