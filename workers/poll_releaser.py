"""Every worker releases due parked polls (``tasks/sweeps/parking.py``) from a thread of its own.

The release is an atomic pop, so the threads of many workers never release one poll twice and
need no lock; together they keep polls on time as long as any worker runs. A tick is short
because a parked poll can be up to one tick late. Under a NanoGPT budget one thread at a time
grants for the fleet (``tasks/sweeps/granting.py``): ranking waiting polls costs CPU that would
otherwise grow with the number of workers.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from tasks.adapters import acks
from tasks.adapters import runtime as rt
from tasks.config.settings import get_settings
from tasks.sweeps import granting, parking

log = logging.getLogger(__name__)

# How often due polls are looked for: the most a parked poll runs late (polls are seconds apart).
TICK_S = 0.2
# Polls published per pop; a fuller batch is followed at once by the next pop.
BATCH = 500
# After a Redis or broker error, wait this long before trying again (and say so once per error).
ERROR_PAUSE_S = 2.0


class PollReleaser(threading.Thread):
    """Publishes due parked polls until :meth:`stop`."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        super().__init__(name="tts-poll-releaser", daemon=True)
        self.tick_s = tick_s
        self._stop_event = threading.Event()
        # Its standing among the fleet's releasers: one grants (and ranks) at a time.
        self._granting = granting.Releasing()

    def run(self) -> None:
        s = get_settings()
        releaser = parking.Releaser(rt.redis_client(), recovery_grace_s=s.recovery_grace_s)
        if s.upstream_rate_per_s > 0:
            # Under a budget a tick grants at most a burst: tick at least twice per burst.
            self.tick_s = min(self.tick_s, s.upstream_burst / s.upstream_rate_per_s / 2)
        pause_s = self.tick_s
        while not self._stop_event.wait(pause_s):
            try:
                self.release_all(releaser)
                pause_s = self.tick_s
            except Exception as exc:  # a broker or Redis blip must not end the thread
                # Only a delay: a popped poll whose publish failed is parked again
                # (parking.release), and a granted one whose job could not be read stays on the
                # reconciler's watch (granting.release); nothing is ended here.
                if acks.store_unavailable(exc):
                    log.warning(
                        "releasing parked polls: job store unavailable (%s); again in %.0fs",
                        exc,
                        ERROR_PAUSE_S,
                    )
                else:
                    log.exception(
                        "releasing parked polls failed; trying again in %.0fs", ERROR_PAUSE_S
                    )
                pause_s = ERROR_PAUSE_S

    def release_all(self, releaser: parking.Releaser) -> int:
        """Publish every poll due now, batch after batch; returns how many were taken. Under
        a NanoGPT budget (``TTS_UPSTREAM_RATE``), only as many polls and waiting submits as it
        has tokens for, chosen by :mod:`tasks.sweeps.granting`; with none, every waiting submit too
        (parked while a budget was on)."""
        ctx = rt.context()
        if ctx.budget.on:
            return granting.release(ctx, state=self._granting)
        stopped = self._stop_event.is_set
        return parking.release_all(
            releaser, ctx.dispatch, now=ctx.clock(), limit=BATCH, stop=stopped
        )

    def stop(self) -> None:
        self._stop_event.set()


_thread: PollReleaser | None = None


def start(**_: Any) -> None:
    global _thread
    if _thread is None:
        _thread = PollReleaser()
        _thread.start()


def stop(**_: Any) -> None:
    global _thread
    if _thread is not None:
        _thread.stop()
        _thread = None
