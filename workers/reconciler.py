"""Every worker runs the reconciler on a timer; a Redis lock lets one of them scan at a time.

Running it inside the workers (rather than only from ``celery beat``) means recovery needs no
extra process: any live worker re-sends what a dead one lost. The scan itself is
:func:`tasks.sweeps.reconcile.scan`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from celery import current_app

from tasks.adapters import acks
from tasks.adapters import runtime as rt
from tasks.config.settings import get_settings
from tasks.sweeps import reconcile
from workers import orphans

log = logging.getLogger(__name__)

LOCK_KEY = "tts:reconcile:lock"


class ReconcilerThread(threading.Thread):
    """Scans every ``interval_s`` while the worker runs; :meth:`stop` ends it promptly."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="tts-reconciler", daemon=True)
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        self._owner = f"{socket.gethostname()}:{id(self)}"

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self.scan_once()
            except Exception as exc:  # a broker or Redis blip must not end the thread
                # Only a delay: a scan moves a job's check before re-sending its step, and ends
                # nothing; what it did not reach, the next scan does.
                if acks.store_unavailable(exc):
                    log.warning(
                        "reconciler: job store unavailable (%s); again in %.0fs",
                        exc,
                        self.interval_s,
                    )
                else:
                    log.exception("reconciler scan failed; trying again in %.0fs", self.interval_s)

    def scan_once(self) -> bool:
        """Scan if no other worker holds the lock for this interval; True if it scanned."""
        lock_ms = max(1, int(self.interval_s * 900))  # expires before the next tick anywhere
        if not rt.redis_client().set(LOCK_KEY, self._owner, nx=True, px=lock_ms):
            return False
        ctx = rt.context()
        if ctx.settings.broker_kind == "redis":
            # Before the scan: a job recorded here is on the watch the scan keeps.
            options = current_app.conf.broker_transport_options or {}
            orphans.sweep(ctx, orphans.broker_client(), options, now=time.time())
        reconcile.scan(ctx)
        return True

    def stop(self) -> None:
        self._stop_event.set()


_thread: ReconcilerThread | None = None


def start(**_: Any) -> None:
    global _thread
    if _thread is None:
        _thread = ReconcilerThread(get_settings().reconcile_interval_s)
        _thread.start()


def stop(**_: Any) -> None:
    global _thread
    if _thread is not None:
        _thread.stop()
        _thread = None
