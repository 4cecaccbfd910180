"""tts.cleanup_audio in a real worker: sent by name (as celery beat sends it), sweeps old audio."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery

from tasks import names
from tasks.audio.storage import file_name
from tests.integration.conftest import wait_until
from tests.support.stack import Lane
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

# A database of the shared test Redis that no other module uses.
DAY_S = 86_400


def plant(directory: Path, name: str, age_s: float) -> Path:
    path = directory / name
    path.write_bytes(b"RIFF....")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_cleanup_sweeps_old_audio_and_dead_parts(
    worker_env: dict[str, str],
    lanes: Callable[[], Lane],
    tmp_path: Path,
) -> None:
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    old = plant(audio_dir, file_name("old-job", "audio/wav"), 2 * DAY_S)
    recent = plant(audio_dir, file_name("recent-job", "audio/mpeg"), 3600)
    foreign = plant(audio_dir, "README.txt", 30 * DAY_S)
    dead_part = plant(audio_dir, ".part-abandoned.tmp", 3600)
    live_part = plant(audio_dir, ".part-writing.tmp", 1)

    broker_url = lanes().url
    env = {
        **worker_env,
        "CELERY_BROKER_URL": broker_url,
        "TTS_AUDIO_DIR": str(audio_dir),
        "TTS_AUDIO_RETENTION": "1",
    }
    worker = WorkerProcess(
        env, tmp_path / "worker.log", concurrency=1, queues=names.DOWNLOAD_QUEUE
    ).start()
    app = Celery("beat-like", broker=broker_url)
    try:
        sent = app.send_task(names.CLEANUP_AUDIO, queue=names.QUEUES[names.CLEANUP_AUDIO])
        wait_until(lambda: f"{names.CLEANUP_AUDIO}[{sent.id}] succeeded" in worker.log)
    finally:
        app.close()
        worker.stop()
    assert not old.exists()
    assert not dead_part.exists()
    assert recent.exists()
    assert foreign.exists()
    assert live_part.exists()
    assert "{'audio': 1, 'parts': 1}" in worker.log
