"""A real ``celery -A workers.app worker`` subprocess, for ``tts-worker demo`` and the tests.

It runs with the same Python as the caller (``sys.executable -m celery``), in a session of its
own, so a Ctrl-C in the terminal reaches only the caller, which then stops the worker in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tasks.config.settings import child_env

# A cold worker imports Celery, kombu and our tasks, then connects: seconds, not minutes.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class WorkerProcess:
    """Start with :meth:`start`; ``log`` holds its output; :meth:`stop` sends SIGTERM (warm).

    ``env`` holds the variables the worker sees differently from the caller's environment;
    ``app`` is what ``-A`` names (the benchmarks also start a plain Celery app this way).
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        concurrency: int = 4,
        pool: str = "prefork",
        queues: str | None = None,
        name: str | None = None,
        extra_argv: tuple[str, ...] = (),
        app: str = "workers.app",
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.name = name or f"itest-{uuid.uuid4().hex[:8]}@%h"
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-l",
            "INFO",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            self.name,
            "--without-gossip",
            "--without-mingle",
        ]
        if queues:
            self.argv += ["-Q", queues]
        self.argv += extra_argv
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> WorkerProcess:
        """Start the worker and wait until it says it is ready; RuntimeError if it never does."""
        env = child_env(self.env)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while " ready." not in self.log:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker not ready after {READY_TIMEOUT_S}s:\n{self.log}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Warm shutdown (SIGTERM), SIGKILL after ``timeout_s``; returns the exit code or None.

        Safe to call before :meth:`start` finished, and more than once.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._kill_leftovers()
        return self.process.returncode

    def _kill_leftovers(self) -> None:
        # A pool child that outlived the main process would keep consuming: end the group.
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)
