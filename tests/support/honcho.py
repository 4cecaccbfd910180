"""The repository's Procfile run by ``honcho start`` as a subprocess, and what it left behind.

Honcho starts every Procfile line in a session of its own, so killing honcho's process group
would not reach them. Each run therefore carries a marker variable in its environment, and
:func:`pids_with_marker` finds every process that inherited it (shells, Celery main processes,
pool children, beat, Flower) through ``/proc``.
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

ROOT = Path(__file__).resolve().parents[2]
MARKER = "TTS_TEST_HONCHO_RUN"
# Honcho waits 5 s (hard-coded KILL_WAIT) between SIGTERM and SIGKILL; allow for its own exit.
STOP_TIMEOUT_S = 20.0


def pids_with_marker(run_id: str) -> list[int]:
    """Processes whose environment holds ``MARKER=run_id`` (Linux ``/proc``)."""
    needle = f"{MARKER}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


class HonchoProcess:
    """``honcho start`` on the Procfile; ``output`` holds what honcho printed."""

    def __init__(self, env: dict[str, str], log_path: Path, *, procfile: Path | None = None):
        self.run_id = uuid.uuid4().hex
        self.log_path = log_path
        self.procfile = procfile or ROOT / "Procfile"
        venv_bin = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            **env,
            MARKER: self.run_id,
            # The Procfile says `celery`: the one of this interpreter's environment.
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        }
        # An empty env file: a developer's .env must not change what the test runs.
        self.env_file = log_path.with_suffix(".env")
        self.env_file.write_text("")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> HonchoProcess:
        argv = [sys.executable, "-m", "honcho", "start"]
        argv += ["-f", str(self.procfile), "-d", str(ROOT), "-e", str(self.env_file)]
        argv += ["--no-colour"]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_for_output(self, text: str, *, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"honcho exited ({self.process.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{text!r} not seen in {timeout_s}s:\n{self.output}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM to honcho, as a terminal's Ctrl+C or a platform would; its return code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process of this run still alive (cleanup after a failed test)."""
        left = pids_with_marker(self.run_id)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left
