"""The worker subprocess the tests start, and a check that it runs this checkout's code."""

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from workers.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]


def assert_runs_this_tree(worker: WorkerProcess) -> None:
    """The worker imports this checkout (``python -m celery`` puts its cwd first on sys.path,
    ahead of the virtualenv's editable install, which may point at another tree)."""
    assert worker.pid is not None
    assert Path(f"/proc/{worker.pid}/cwd").resolve() == ROOT


# A worker that refuses to start does so at once; one that starts would run until this kills it.
REFUSAL_TIMEOUT_S = 60


def start_refused(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Start ``celery -A workers.app worker`` with ``env`` and wait for it to exit (a worker
    that should refuse to start); its output is in ``stdout`` and ``stderr``."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-l", "INFO"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


__all__ = ["ROOT", "WorkerProcess", "assert_runs_this_tree", "start_refused"]
