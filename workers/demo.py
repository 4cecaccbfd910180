"""``tts-worker demo``: one job end to end on whatever this machine has, leaving nothing behind.

* Broker and job state: see :mod:`workers.demo_redis` (the configured Redis, a local one, or a
  private ``redis-server``).
* NanoGPT: the real API when ``NANOGPT_API_KEY`` is set; else the simulator on loopback, steered
  by a directive the user never sees so that the job waits in a queue for a few polls.
* A real worker process, a webhook receiver that checks signatures, then the live progress, the
  audio file and the webhook. Everything started here is stopped here, also on failure, Ctrl-C
  or SIGTERM; a failure ends in one line saying why.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console

from tasks.client import Client, Unreachable
from tasks.config.settings import Settings, get_settings
from tasks.nanogpt import validation
from tasks.record.jobs import Job
from tasks.record.states import Status
from workers import demo_redis, loopback
from workers.progress import WAIT_SLACK_S, WaitTimeout, error_text, follow, outcome_lines
from workers.receiver import Delivery, Receiver
from workers.simulator import Simulator
from workers.worker_process import WorkerProcess

SAMPLE_TEXT = "Hello from tts-worker. This sentence was submitted, polled, stored and announced."
# An ElevenLabs model: NanoGPT answers 202 and the job goes through the poll path.
MODEL = "Elevenlabs-Turbo-V2.5"
# Four pending answers with a falling queue position: enough to watch the progress move.
SIM_DIRECTIVE = "[[sim pending=4 queue=3]]"
# The simulator answers at once, so a minute is ample for the whole job.
SIM_POLL_TIMEOUT_S = 60.0
# With the simulator, quick polls keep the demo to seconds; the real API keeps the user's settings.
SIM_WORKER_ENV = {
    "TTS_POLL_INTERVAL": "0.3",
    "TTS_POLL_MAX_INTERVAL": "1",
    "TTS_POLL_TIMEOUT": str(SIM_POLL_TIMEOUT_S),
}
# The webhook follows the outcome within one notify task; this is generous.
WEBHOOK_TIMEOUT_S = 30.0
# Two pool processes: one can poll while the other downloads or notifies.
WORKER_CONCURRENCY = 2
EXIT_INTERRUPTED = 130
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DemoFailed(Exception):
    """The demo could not complete; the message is the one line shown to the user."""


# Failures the demo reports as they are: their messages are written for the user.
_EXPECTED = (DemoFailed, demo_redis.NoRedis, Unreachable, loopback.LoopbackDown, WaitTimeout)


@dataclass(frozen=True)
class NanoGPT:
    """Where the demo's worker sends its API calls, and the text it submits."""

    api_key: str
    base_url: str
    text: str
    simulated: bool


def run(out: Console, err: Console, *, embedded_redis: bool = False) -> int:
    """Run the demo; returns the exit code (0 done, 1 failed, 130 interrupted)."""
    scratch = Path(tempfile.mkdtemp(prefix="tts-demo-"))
    started = time.monotonic()
    stack = ExitStack()
    failure: str | None = None
    code = 0
    with _signals_interrupt():
        try:
            _run(stack, out, scratch / "worker.log", embedded_redis=embedded_redis)
        except KeyboardInterrupt:
            failure, code = "interrupted", EXIT_INTERRUPTED
        except _EXPECTED as exc:
            failure, code = str(exc), 1
        except Exception as exc:  # a bug, still worth one line and a clean exit
            failure, code = f"unexpected {type(exc).__name__}: {exc}", 1
        finally:
            with _signals_ignored():
                stack.close()
    log = scratch / "worker.log"
    keep_log = code == 1 and log.exists()  # after a failure, the worker's log may say why
    if not keep_log:
        shutil.rmtree(scratch, ignore_errors=True)
    if failure is None:
        elapsed_s = time.monotonic() - started
        out.print(f"done in {elapsed_s:.1f} s; everything the demo started is stopped")
        return 0
    if code == EXIT_INTERRUPTED:
        failure += "; everything the demo started is stopped"
    reason = " ".join(failure.splitlines())  # one line, whatever the exception said
    err.print(f"tts-worker demo: {reason}" + (f" (worker log: {log})" if keep_log else ""))
    return code


def _run(stack: ExitStack, out: Console, log_path: Path, *, embedded_redis: bool) -> None:
    if loopback.ensure():
        out.print("note     loopback was down (a fresh network namespace?); brought it up")
    notes: list[str] = []
    settings, where = demo_redis.choose(stack, get_settings(), embedded=embedded_redis, note=notes)
    for note in notes:
        out.print(f"note     {note}")
    nano = _nanogpt(stack, settings)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = stack.enter_context(Receiver(secret=secret))
    client = stack.enter_context(Client(settings))

    out.print(f"broker   {where}")
    if nano.simulated:
        out.print(f"NanoGPT  simulator at {nano.base_url} (set NANOGPT_API_KEY for the real API)")
    else:
        out.print(f"NanoGPT  {nano.base_url} (NANOGPT_API_KEY is set: a real, billed job)")
    out.print(f"webhook  {receiver.url} (signed with a fresh whsec_ secret)")
    _start_worker(stack, settings, nano, secret, log_path, out)

    job_id = str(uuid.uuid4())
    request = validation.submit_request(nano.text, MODEL)
    out.print(f'text     "{SAMPLE_TEXT}"')
    out.print(f"model    {MODEL}")
    client.submit(request, notify_url=receiver.url, job_id=job_id)
    out.print(f"job      {job_id} (tts.submit_tts)")
    wait_s = (SIM_POLL_TIMEOUT_S if nano.simulated else settings.poll_timeout_s) + WAIT_SLACK_S
    job = follow(lambda: client.get_job(job_id), timeout_s=wait_s, console=out)
    for line in outcome_lines(job):
        out.print(line)
    delivery = _webhook(receiver, job_id)
    out.print(
        f"webhook  {delivery.json()['type']}, signature verified "
        f"(webhook-id {delivery.headers.get('webhook-id')})"
    )
    out.print(json.dumps(delivery.json(), indent=2))
    if job.status != Status.COMPLETED:
        raise DemoFailed(f"the job failed with {error_text(job)}")
    _check_audio(job)


def _nanogpt(stack: ExitStack, settings: Settings) -> NanoGPT:
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
        return NanoGPT(key, settings.base_url, SAMPLE_TEXT, simulated=False)
    key = "sim-" + secrets.token_hex(8)
    simulator = stack.enter_context(Simulator(api_key=key))
    return NanoGPT(key, simulator.base_url, f"{SAMPLE_TEXT} {SIM_DIRECTIVE}", simulated=True)


def _start_worker(
    stack: ExitStack,
    settings: Settings,
    nano: NanoGPT,
    secret: str,
    log_path: Path,
    out: Console,
) -> None:
    env = {
        "CELERY_BROKER_URL": settings.broker_url,
        "TTS_REDIS_URL": settings.redis_url,
        "NANOGPT_API_KEY": nano.api_key,
        "NANOGPT_BASE_URL": nano.base_url,
        "TTS_WEBHOOK_SECRET": secret,
        # The simulator's audio and the receiver are on 127.0.0.1, refused unless trusted.
        "TTS_TRUSTED_HOSTS": "127.0.0.1",
        "TTS_TRUSTED_WEBHOOK_HOSTS": "127.0.0.1",
        "TTS_AUDIO_DIR": str(settings.audio_dir),
        **(SIM_WORKER_ENV if nano.simulated else {}),
    }
    name = f"demo-{uuid.uuid4().hex[:8]}@%h"
    worker = WorkerProcess(env, log_path, concurrency=WORKER_CONCURRENCY, name=name)
    stack.callback(worker.stop)
    started = time.monotonic()
    try:
        worker.start()
    except RuntimeError as exc:
        raise DemoFailed(str(exc).splitlines()[0]) from exc
    out.print(
        f"worker   celery -A workers.app worker (pid {worker.pid}), "
        f"ready in {time.monotonic() - started:.1f} s"
    )


def _webhook(receiver: Receiver, job_id: str) -> Delivery:
    try:
        delivery = receiver.wait_for(job_id, timeout_s=WEBHOOK_TIMEOUT_S)
    except TimeoutError as exc:
        raise DemoFailed(f"no webhook for job {job_id} within {WEBHOOK_TIMEOUT_S:.0f} s") from exc
    if delivery.verified is not True:
        raise DemoFailed("the webhook's signature did not verify")
    return delivery


def _check_audio(job: Job) -> None:
    audio = (job.outcome or {}).get("audio") or {}
    path = Path(audio.get("path", ""))
    if not path.is_file():
        raise DemoFailed(f"the audio file {path} does not exist")
    if hashlib.sha256(path.read_bytes()).hexdigest() != audio.get("sha256"):
        raise DemoFailed(f"the audio file {path} does not match its sha256")


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does: through the clean-up."""
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short and leave a worker or Redis running."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
