"""Receipts the job store refused: a caller's message this worker received while the job store
did not answer, so its record was not made then (:func:`workers.signals.record_received`).

Usually harmless: the task records the job first thing when it runs. But when the broker is
the same Redis, the worker loses the connection too, forgets the messages it had prefetched,
and the Redis transport gives them back only after its visibility timeout (an hour): nothing
watched the job meanwhile. Seen in the suite: a submit received at the instant Redis was
SIGKILLed, no record, no outcome within the run. So each is kept here, in this process, and
recorded by the reconciler's thread at its next tick once the store answers; the record's
watch (``tts:due``) then re-sends the step if its message has not run by then. Recording twice
is safe: a record the task made meanwhile is found, not made again (tasks/steps/accept.py).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from tasks.adapters import acks, received
from tasks.steps.context import Ctx

log = logging.getLogger(__name__)

# More than any outage's receipts in one process (a worker prefetches a few hundred at most).
MAX_KEPT = 10_000


class Receipt:
    __slots__ = ("args", "kwargs", "name", "start_at", "task_id")

    def __init__(
        self,
        name: str,
        task_id: str,
        args: list[Any] | tuple[Any, ...],
        kwargs: dict[str, Any],
        start_at: float | None,
    ) -> None:
        self.name, self.task_id, self.args, self.kwargs = name, task_id, args, kwargs
        self.start_at = start_at


_kept: collections.deque[Receipt] = collections.deque(maxlen=MAX_KEPT)
_lock = threading.Lock()


def keep(receipt: Receipt) -> None:
    """Keep a receipt whose record the job store refused, to record it again later."""
    with _lock:
        if len(_kept) == MAX_KEPT:
            log.error("receipts: %d kept already; the oldest is dropped", MAX_KEPT)
        _kept.append(receipt)


def kept() -> int:
    with _lock:
        return len(_kept)


def record_again(ctx: Ctx) -> int:
    """Record the kept receipts, oldest first; returns how many were recorded. Stops at the
    first the store refuses again (it stays kept, and the rest); a receipt that fails for
    another reason is logged and dropped (the task reports its own problem when it runs)."""
    done = 0
    while True:
        with _lock:
            if not _kept:
                return done
            receipt = _kept.popleft()
        try:
            received.on_received(
                ctx,
                receipt.name,
                receipt.task_id,
                receipt.args,
                receipt.kwargs,
                start_at=receipt.start_at,
            )
        except Exception as exc:
            if acks.store_unavailable(exc):
                with _lock:
                    _kept.appendleft(receipt)
                return done
            log.exception("receipts: recording %s again failed", receipt.task_id)
            continue
        log.info(
            "receipts: %s %s recorded after the job store came back", receipt.name, receipt.task_id
        )
        done += 1
