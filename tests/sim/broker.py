"""A fake broker with the Redis transport's at-least-once semantics, and the workers on it.

As kombu's Redis transport does it: a message a worker takes leaves its queue for the
``unacked`` table (with the time it was taken); an ack removes it; a worker that dies leaves what
it held there, and only ``restore_visible`` (every worker, every so often) puts entries older
than the visibility timeout back; a pool child that dies has its message requeued at the head
(``reject_on_worker_lost``). A worker prefetches up to ``prefetch`` messages; a message with an
ETA is held in the worker's memory until due and does not count against the prefetch (Celery
raises the QoS for it). On top, the simulation may duplicate a publish, take a message other than
the head of its queue (reordering), and fail a publish.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions

from tasks import names


class PublishFailed(kombu.exceptions.OperationalError):
    """A publish the broker refused (a blip): raised into the task that sent it, as Celery's
    ``apply_async`` raises kombu's ``OperationalError``."""


@dataclass
class Message:
    task_id: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int = 0
    eta: float | None = None
    redelivered: bool = False
    # Custom headers Celery keeps across Task.retry (tasks/adapters/acks.py's re-send counts).
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Held:
    """A message in a worker's hands: received, maybe waiting for its ETA, maybe running."""

    tag: int
    message: Message
    running: bool = False


@dataclass
class Worker:
    wid: int
    prefetch: int
    concurrency: int
    alive: bool = True
    held: dict[int, Held] = field(default_factory=dict)

    def waiting(self, now: float) -> list[Held]:
        """Held messages that may start now, in the order they were taken."""
        return [
            h
            for h in self.held.values()
            if not h.running and (h.message.eta is None or h.message.eta <= now)
        ]

    def running(self) -> int:
        return sum(1 for h in self.held.values() if h.running)

    def counted(self, now: float) -> int:
        """What counts against the prefetch: all but messages still waiting for their ETA."""
        return sum(
            1
            for h in self.held.values()
            if h.message.eta is None or h.message.eta <= now or h.running
        )


class Broker:
    def __init__(
        self,
        rng: random.Random,
        *,
        visibility_timeout_s: float,
        p_duplicate: float,
        p_reorder: float,
        p_publish_fail: float,
    ) -> None:
        self.rng = rng
        self.visibility_timeout_s = visibility_timeout_s
        self.p_duplicate = p_duplicate
        self.p_reorder = p_reorder
        self.p_publish_fail = p_publish_fail
        self.queues: dict[str, list[Message]] = {
            q: [] for q in dict.fromkeys(names.QUEUES.values())
        }
        # tag -> (message, taken at, worker id): kombu's unacked hash and its index.
        self.unacked: dict[int, tuple[Message, float, int]] = {}
        self._tags = 0
        self.published = 0

    def publish(self, message: Message, *, fail_ok: bool = True) -> None:
        if fail_ok and self.rng.random() < self.p_publish_fail:
            raise PublishFailed("simulated broker blip")
        self.published += 1
        queue = self.queues[names.QUEUES[message.name]]
        queue.append(message)
        if self.rng.random() < self.p_duplicate:
            queue.append(Message(**{**message.__dict__, "kwargs": dict(message.kwargs)}))

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def take(self, worker: Worker, now: float) -> Held | None:
        """The next message for ``worker`` (usually a queue's head), moved to unacked."""
        full = [q for q in self.queues.values() if q]
        if not full:
            return None
        queue = self.rng.choice(full)
        index = 0
        if len(queue) > 1 and self.rng.random() < self.p_reorder:
            index = self.rng.randrange(min(len(queue), 4))
        message = queue.pop(index)
        self._tags += 1
        self.unacked[self._tags] = (message, now, worker.wid)
        held = Held(self._tags, message)
        worker.held[held.tag] = held
        return held

    def ack(self, worker: Worker, held: Held) -> None:
        self.unacked.pop(held.tag, None)
        worker.held.pop(held.tag, None)

    def requeue(self, worker: Worker, held: Held) -> None:
        """A pool child died running it: kombu's reject(requeue=True), at the queue's head."""
        worker.held.pop(held.tag, None)
        entry = self.unacked.pop(held.tag, None)
        if entry is not None:
            message = entry[0]
            message.redelivered = True
            self.queues[names.QUEUES[message.name]].insert(0, message)

    def restore_visible(self, now: float) -> int:
        """Put back what was taken longer than the visibility timeout ago."""
        old = [t for t, (_, at, _) in self.unacked.items() if at < now - self.visibility_timeout_s]
        for tag in old:
            message, _, _ = self.unacked.pop(tag)
            message.redelivered = True
            self.queues[names.QUEUES[message.name]].append(message)
        return len(old)

    def next_eta(self, workers: list[Worker], now: float) -> float | None:
        etas = [
            h.message.eta
            for w in workers
            if w.alive
            for h in w.held.values()
            if not h.running and h.message.eta is not None and h.message.eta > now
        ]
        return min(etas) if etas else None
