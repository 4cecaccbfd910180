"""Running the ``tts-worker`` command line in tests: in process (CliRunner) or as a process."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil
from typer.testing import CliRunner, Result

from tasks.config.settings import get_settings
from workers.cli import app

# The console script pip installed beside this Python (the same venv).
TTS_WORKER = str(Path(sys.executable).with_name("tts-worker"))
# Variables a developer's shell may carry that would change what the CLI talks to.
AMBIENT = ("CELERY_BROKER_URL", "TTS_REDIS_URL", "NANOGPT_API_KEY", "NANOGPT_BASE_URL")


def invoke(args: list[str], env: Mapping[str, str | None] | None = None) -> Result:
    """Run the CLI in this process with ``env`` on top of a clean environment."""
    full: dict[str, str | None] = {name: None for name in AMBIENT}
    full.update(env or {})
    _forget_settings()
    try:
        return CliRunner().invoke(app, args, env=full)
    finally:
        _forget_settings()


def _forget_settings() -> None:
    # Settings are read once per process; each invocation must see its own environment.
    get_settings.cache_clear()


def process_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a real ``tts-worker`` process: ours without AMBIENT, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    return {**base, **env}


def assert_one_line(text: str) -> str:
    """The text is one line (and no traceback); returns it stripped."""
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def processes_marked(name: str, value: str) -> list[str]:
    """Command lines of every live process whose environment has ``name=value``.

    Children inherit the environment, so this finds whatever a CLI process started (worker,
    pool processes, redis-server), even after they were re-parented when it exited.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(name) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return found
