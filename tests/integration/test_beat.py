"""celery beat for real: with TTS_AUDIO_RETENTION set it sends tts.cleanup_audio on its own, and
a worker consuming tts.download sweeps the old audio (tests/integration/test_cleanup.py sends the
task by hand)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks import names
from tasks.audio.storage import file_name
from tasks.config.settings import child_env
from tests.integration.conftest import wait_until
from tests.support.stack import Lane, Spawn
from tests.support.worker import ROOT, assert_runs_this_tree

pytestmark = pytest.mark.integration

DAY_S = 86_400


def plant(directory: Path, name: str, age_s: float) -> Path:
    path = directory / name
    path.write_bytes(b"RIFF....")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


@pytest.fixture
def beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Path]]:
    """``beat(env)`` starts ``celery -A workers.app beat`` from this tree; returns its log."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(env: dict[str, str]) -> Path:
        log = tmp_path / "beat.log"
        with log.open("ab") as out:
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "workers.app",
                        "beat",
                        "-l",
                        "INFO",
                        "--schedule",
                        str(tmp_path / "beat-schedule"),
                    ],
                    env=child_env(env),
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return log

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(20)


def test_beat_sweeps_old_audio(
    lanes: Callable[[], Lane],
    spawn: Spawn,
    beat: Callable[[dict[str, str]], Path],
    tmp_path: Path,
) -> None:
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    old = plant(audio_dir, file_name("old-job", "audio/wav"), 30 * DAY_S)
    new = plant(audio_dir, file_name("new-job", "audio/wav"), 0)
    env = lanes().env(
        TTS_AUDIO_DIR=str(audio_dir), TTS_AUDIO_RETENTION="1", TTS_CLEANUP_INTERVAL="1"
    )
    worker = spawn(env, concurrency=1, queues=names.DOWNLOAD_QUEUE).start()
    assert_runs_this_tree(worker)
    log = beat(env)
    wait_until(lambda: not old.exists(), timeout_s=30)
    # Beat sent it, more than once: it is a schedule, not a one-off.
    wait_until(lambda: worker.log.count(f"{names.CLEANUP_AUDIO}[") >= 4, timeout_s=30)
    assert f"Scheduler: Sending due task {names.CLEANUP_AUDIO}" in log.read_text()
    assert new.exists()
