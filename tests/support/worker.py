"""A real ``celery -A workers.app worker`` subprocess, started and stopped by tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

# A cold worker imports Celery, kombu and our tasks, then connects: seconds, not minutes.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class WorkerProcess:
    """Start with :meth:`start`; ``log`` holds its output; :meth:`stop` sends SIGTERM (warm)."""

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
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.name = name or f"itest-{uuid.uuid4().hex[:8]}@%h"
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
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

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env}
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
        """Warm shutdown; the exit code, or None if it had to be killed after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)
