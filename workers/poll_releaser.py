"""Every worker runs a releaser thread for the jobs that wait in Redis (tasks/sweeps/granting.py).

One thread at a time releases for the fleet (a lock in Redis the others wait on, taken over
soon after its holder stops): ranking waiting polls costs CPU that would otherwise grow with
the number of workers. Together they keep waiting jobs on time as long as any worker runs. A
tick is short because a parked poll can be up to one tick late.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from tasks.adapters import acks
from tasks.adapters import runtime as rt
from tasks.config.settings import get_settings
from tasks.sweeps import granting

log = logging.getLogger(__name__)

# How often waiting jobs are looked for: the most a parked poll runs late (polls are seconds apart).
TICK_S = 0.2
# After a Redis or broker error, wait this long before trying again (and say so once per error).
ERROR_PAUSE_S = 2.0


class PollReleaser(threading.Thread):
    """Releases waiting jobs until :meth:`stop`."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        super().__init__(name="tts-poll-releaser", daemon=True)
        self.tick_s = tick_s
        self._stop_event = threading.Event()
        # Its standing among the fleet's releasers: one releases (and ranks) at a time.
        self._granting = granting.Releasing()

    def run(self) -> None:
        s = get_settings()
        if s.upstream_rate_per_s > 0:
            # Under a budget a tick grants at most a burst: tick at least twice per burst.
            self.tick_s = min(self.tick_s, s.upstream_burst / s.upstream_rate_per_s / 2)
        pause_s = self.tick_s
        while not self._stop_event.wait(pause_s):
            try:
                self.release_all()
                pause_s = self.tick_s
            except Exception as exc:  # a broker or Redis blip must not end the thread
                # Only a delay: a job taken whose step could not be published, or whose record
                # could not be read, stays on the reconciler's watch a grace away
                # (granting.release); nothing is ended here.
                if acks.store_unavailable(exc):
                    log.warning(
                        "releasing waiting jobs: job store unavailable (%s); again in %.0fs",
                        exc,
                        ERROR_PAUSE_S,
                    )
                else:
                    log.exception(
                        "releasing waiting jobs failed; trying again in %.0fs", ERROR_PAUSE_S
                    )
                pause_s = ERROR_PAUSE_S

    def release_all(self) -> int:
        """Release what the budget has tokens for; with the budget off (unlimited tokens),
        batch after batch until one comes back short. Returns how many jobs were taken."""
        ctx = rt.context()
        taken = 0
        while not self._stop_event.is_set():
            n = granting.release(ctx, state=self._granting)
            taken += n
            if ctx.budget.on or n < granting.UNLIMITED_BATCH:
                break
        return taken

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
