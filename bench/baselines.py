"""The baselines, loaded into the project's own worker with ``celery worker -I bench.baselines``.

They run in the same worker processes as the project's tasks, on the same broker, with the same
Celery configuration (acks_late, prefetch, events, JSON), so a ratio compares the work alone:

* ``bench.noop``: a task that does nothing; Celery's own ceiling;
* ``bench.blocking_job``: one TTS job the documented way: submit, then the seed document's
  ``wait_for_tts`` loop (``time.sleep(delay_s)`` between polls, inside the task), then download
  the audio and POST a webhook, all in one task that holds its worker slot throughout.

``bench_gc`` is a remote-control command that runs a full garbage collection in the worker's
main process, so memory samples are not skewed by garbage that a collection would free.
"""

from __future__ import annotations

import gc
import uuid
from typing import Any

import requests
from celery import shared_task
from celery.worker.control import control_command

from bench import seed_loop
from tasks.config.settings import get_settings

NOOP = "bench.noop"
BLOCKING_JOB = "bench.blocking_job"
NOOP_QUEUE = "bench.noop"
BLOCKING_QUEUE = "bench.blocking"
QUEUES = (NOOP_QUEUE, BLOCKING_QUEUE)
# The seed document's own timeout for every request.
HTTP_TIMEOUT_S = 30


@shared_task(name=NOOP)
def noop() -> None:
    """Nothing at all."""


@shared_task(name=BLOCKING_JOB)
def blocking_job(text: str, model: str, notify_url: str, job_id: str, delay_s: float = 3) -> str:
    """Submit, wait in the task with the seed loop, download, notify: the recipe's whole job."""
    s = get_settings()
    assert s.api_key is not None  # the worker refuses to start without one
    api_key = s.api_key.get_secret_value()
    seed_loop.BASE = s.base_url.rstrip("/")
    ticket = requests.post(
        f"{seed_loop.BASE}/tts",
        headers={"x-api-key": api_key},
        json={"text": text, "model": model},
        timeout=HTTP_TIMEOUT_S,
    )
    ticket.raise_for_status()
    run = ticket.json()
    audio_url = seed_loop.wait_for_tts(
        run["runId"],
        run.get("model", model),
        api_key,
        cost=run.get("cost"),
        payment_source=run.get("paymentSource"),
        delay_s=delay_s,  # type: ignore[arg-type]  # the seed's annotation says int; 3 is
    )
    audio = requests.get(audio_url, timeout=HTTP_TIMEOUT_S)
    audio.raise_for_status()
    path = s.audio_dir / f"baseline-{uuid.uuid4().hex}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(audio.content)
    body = {
        "type": "tts.completed",
        "job_id": job_id,
        "run_id": run["runId"],
        "audio": {"path": str(path), "bytes": len(audio.content)},
    }
    requests.post(notify_url, json=body, timeout=HTTP_TIMEOUT_S).raise_for_status()
    return job_id


@control_command()  # type: ignore[misc]
def bench_gc(state: Any) -> dict[str, int]:
    """Collect garbage in the worker's main process (where waiting countdown messages live)."""
    return {"collected": gc.collect()}
