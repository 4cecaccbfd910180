"""Secrets stay in the environment; a misconfigured worker refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tasks import names
from tests.integration.conftest import API_KEY, ELEVEN, SECRET, Send
from tests.support import redis_dump
from tests.support.worker import WorkerProcess, start_refused
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver

pytestmark = pytest.mark.integration


def test_worker_without_api_key_refuses_to_start(worker_env: dict[str, str]) -> None:
    env = {k: v for k, v in {**os.environ, **worker_env}.items() if k != "NANOGPT_API_KEY"}
    done = start_refused(env)
    assert done.returncode != 0
    assert "NANOGPT_API_KEY is not set" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_worker_with_a_clear_text_base_url_refuses_to_start(worker_env: dict[str, str]) -> None:
    env = {**os.environ, **worker_env, "TTS_TRUSTED_HOSTS": ""}  # base URL: http://127.0.0.1
    assert env["NANOGPT_BASE_URL"].startswith("http://127.0.0.1")
    done = start_refused(env)
    assert done.returncode != 0
    assert "NANOGPT_BASE_URL http://127.0.0.1" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_bad_webhook_secret_is_a_clear_error(worker_env: dict[str, str]) -> None:
    env = {**os.environ, **worker_env, "TTS_WEBHOOK_SECRET": "not base64!"}
    done = subprocess.run(
        [sys.executable, "-c", "from tasks.config.settings import get_settings; get_settings()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "TTS_WEBHOOK_SECRET" in done.stderr


def test_one_byte_webhook_secret_stops_the_worker(worker_env: dict[str, str]) -> None:
    env = {**os.environ, **worker_env, "TTS_WEBHOOK_SECRET": "whsec_AA=="}
    done = start_refused(env)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "TTS_WEBHOOK_SECRET decodes to a 1-byte key" in output
    assert "whsec_AA==" not in output  # not echoed, though this one is useless anyway


def test_no_secret_in_redis_or_logs(
    send: Send, receiver: Receiver, worker: WorkerProcess, redis_server: EmbeddedRedis
) -> None:
    jid = f"secret-{uuid.uuid4().hex}"
    send(
        names.SUBMIT_TTS,
        "Keep it secret [[sim pending=1]]",
        ELEVEN,
        notify_url=f"{receiver.url}?token=abc",
        job_id=jid,
    )
    delivery = receiver.wait_for(jid)
    secret_body = SECRET.removeprefix("whsec_")
    assert API_KEY not in delivery.body.decode()

    everything = redis_dump.dump(redis_server.url) + worker.log
    assert jid in everything  # the scan did see the job
    assert API_KEY not in everything
    assert secret_body not in everything
