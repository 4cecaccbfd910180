"""``/metrics`` for a prefork worker, in prometheus_client's multiprocess mode.

Pool processes count in files under a directory that the worker main process creates before it
forks them; the main process serves the sum over those files on ``TTS_METRICS_HOST:PORT``. Each
worker gets a fresh directory, so counts never mix between workers or survive a restart (Prometheus
handles counter resets).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

# prometheus_client's switch into multiprocess mode, read by it (not by our settings) in every
# process that records or serves metrics; so it is the one environment variable we write.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class MetricsEndpoint:
    """The directory pool processes write to, and once started, the HTTP server reading it."""

    directory: Path
    server: WSGIServer | None = None
    thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self.server.server_port if self.server else None

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` (the sum over every pool process, live or dead) on a thread."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", host, self.server.server_port)

    def close(self) -> None:
        """Stop serving and delete the directory."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        shutil.rmtree(self.directory, ignore_errors=True)


def prepare() -> MetricsEndpoint:
    """Create this worker's directory and switch prometheus_client here (and in future forks)
    into multiprocess mode. Call before the pool forks and before anything records a metric."""
    directory = Path(tempfile.mkdtemp(prefix="tts-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    if "prometheus_client" in sys.modules:
        # Already imported (the `celery` command loads Flower's plugin, which imports it), so
        # its storage was chosen without the directory: choose again. Only metrics built after
        # this (ours are built on first use, in the pool processes) take the new storage.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return MetricsEndpoint(directory)


def mark_process_dead(pid: int) -> None:
    """Drop a pool process's live-gauge files; its counters stay in the sum."""
    if MULTIPROC_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
