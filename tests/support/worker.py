"""The worker subprocess the tests start, and a check that it runs this checkout's code."""

from pathlib import Path

from workers.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]


def assert_runs_this_tree(worker: WorkerProcess) -> None:
    """The worker imports this checkout (``python -m celery`` puts its cwd first on sys.path,
    ahead of the virtualenv's editable install, which may point at another tree)."""
    assert worker.pid is not None
    assert Path(f"/proc/{worker.pid}/cwd").resolve() == ROOT


__all__ = ["ROOT", "WorkerProcess", "assert_runs_this_tree"]
