"""A file the worker touches while it consumes: a liveness check that costs one ``stat``.

``celery inspect ping`` is the usual probe, but each run starts a Python interpreter, imports
Celery and the app, and makes a round trip through the broker and the worker's control loop:
about a second of CPU per probe per pod. Instead, once the consumer is running, this bootstep
touches ``TTS_LIVENESS_FILE`` from the consumer's own event-loop timer. A probe then only
checks the file's age. It goes stale when the event loop is stuck or the consumer is not
running (for instance while it reconnects to a broker that went away).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps

from tasks.config.settings import get_settings

# Well under the probe's staleness limit (60 s in deploy/), so one late tick never fails it.
TOUCH_INTERVAL_S = 10.0


def touch(path: Path) -> None:
    """Create ``path`` or set its modification time to now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


class LivenessFile(bootsteps.StartStopStep):
    """Consumer bootstep: touches the file every :data:`TOUCH_INTERVAL_S` while consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path = get_settings().liveness_file
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        if self.path is None:
            return
        path = self.path
        touch(path)
        self.tref = parent.timer.call_repeatedly(TOUCH_INTERVAL_S, touch, (path,))

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            parent.timer.cancel(self.tref)
            self.tref = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        # A worker that is gone should not look alive to whoever reads the file next.
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def install(app: Celery) -> None:
    """Add the bootstep to ``app``'s consumer."""
    app.steps["consumer"].add(LivenessFile)
