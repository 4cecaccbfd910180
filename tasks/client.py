"""Send TTS jobs by task name and read their state: what the CLI and the demo enqueue with.

It sends like any app that only knows the task names: a Celery app of its own (the worker's
serializer and routes, from :mod:`tasks.config.celery_config`), never the task functions or the
steps. It does import the worker's own plain code to read what the worker writes: the job record
(:mod:`tasks.record`), the budget's snapshot, and the argument checks (so the CLI refuses what a
worker would). Broker or Redis trouble surfaces as :class:`Unreachable`, with a message fit for
one line.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import kombu.exceptions
import redis
from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from tasks import names
from tasks.config.celery_config import celery_config
from tasks.config.settings import Settings
from tasks.nanogpt.validation import PollRequest, SubmitRequest
from tasks.pacing.budget import Budget, Snapshot
from tasks.record.jobs import Job, JobStore
from tasks.record.states import CANCELLED, UNKNOWN_JOB, already_ended
from tasks.redact import kwargs_repr, short
from tasks.sweeps import granting

# Redis answers in microseconds on a healthy host; a second of silence means it is not there.
REDIS_TIMEOUT_S = 2.0
# How long :meth:`Client.cancel` waits for a worker to take the cancel: it acts as soon as a
# worker receives it (tasks/adapters/received.py), which a healthy worker does in well under a
# second.
CANCEL_WAIT_S = 10.0
# How often it reads the job while it waits: a cancel lands in milliseconds.
CANCEL_CHECK_S = 0.1


class Unreachable(Exception):
    """The broker or the job-state Redis did not answer."""


class CancelNotTaken(TimeoutError):
    """``tts.cancel`` was sent, but no worker had run it when the wait ran out."""


@dataclass(frozen=True)
class Enqueued:
    """One message published: the job it belongs to and where it went."""

    job_id: str
    task: str
    queue: str
    task_id: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Client:
    """Publishes ``tts.submit_tts`` / ``tts.poll_tts`` and reads job records; close when done."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app = Celery("tts-client", set_as_current=False)
        self._app.config_from_object(celery_config(settings))
        self._redis: redis.Redis | None = None
        self._jobs: JobStore | None = None

    @property
    def broker(self) -> str:
        """The broker URL with any password masked, for messages."""
        return str(maybe_sanitize_url(self.settings.broker_url))

    def submit(self, request: SubmitRequest, *, notify_url: str | None, job_id: str) -> Enqueued:
        """Enqueue ``tts.submit_tts`` for a validated request under ``job_id``."""
        options = {k: v for k, v in request.body().items() if k not in ("text", "model")}
        kwargs = {**options, **request.steering(), "notify_url": notify_url, "job_id": job_id}
        return self._send(names.SUBMIT_TTS, [request.text, request.model], kwargs, job_id)

    def poll(self, request: PollRequest, *, notify_url: str | None, job_id: str) -> Enqueued:
        """Enqueue ``tts.poll_tts`` for a run submitted elsewhere, followed as ``job_id``."""
        kwargs = {
            "cost": request.cost,
            "payment_source": request.payment_source,
            "is_api_request": request.is_api_request,
            "notify_url": notify_url,
            "job_id": job_id,
        }
        return self._send(names.POLL_TTS, [request.run_id, request.model], kwargs, job_id)

    def cancel(self, job_id: str, *, timeout_s: float = CANCEL_WAIT_S) -> str:
        """Cancel a job that has not ended; returns ``cancelled``, ``already ended: <status>``
        or ``unknown job``, as ``tts.cancel`` does.

        A job that has ended is answered from its record and nothing is sent. Otherwise
        ``tts.cancel`` goes to a worker (which alone changes the job) and this waits for the
        job's outcome. Raises :class:`CancelNotTaken` if none came within ``timeout_s`` (the
        cancel stays queued and still acts when a worker takes it). ``unknown job``: no worker
        has received a job of that id yet; the cancel is sent all the same and ends the job
        if its submit is received later (tasks/record/cancels.py).
        """
        job = self.get_job(job_id)
        if job is not None and job.outcome is not None:
            return already_ended(job.status)
        self._send(names.CANCEL, [job_id], {}, job_id)
        if job is None:
            return UNKNOWN_JOB
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job is None:  # its record expired meanwhile
                return UNKNOWN_JOB
            if job.outcome is not None:
                code = (job.outcome.get("error") or {}).get("code")
                return CANCELLED if code == "CANCELLED" else already_ended(job.status)
            if time.monotonic() >= deadline:
                raise CancelNotTaken(
                    f"tts.cancel for {job_id} sent, but no worker ran it within {timeout_s:g} s "
                    f"(is one consuming {names.QUEUES[names.CANCEL]}?)"
                )
            time.sleep(CANCEL_CHECK_S)

    def _send(self, task: str, args: list[Any], kwargs: dict[str, Any], job_id: str) -> Enqueued:
        queue = names.QUEUES[task]
        try:
            result = self._app.send_task(
                task,
                args=args,
                kwargs=kwargs,
                queue=queue,
                # What events and Flower show: text cut short, notify_url without its query.
                argsrepr=repr([short(arg) for arg in args]),
                kwargsrepr=kwargs_repr(kwargs),
            )
        except (kombu.exceptions.OperationalError, OSError) as exc:
            raise Unreachable(f"cannot reach the broker at {self.broker}: {exc}") from exc
        return Enqueued(job_id, task, queue, str(result.id))

    def get_job(self, job_id: str) -> Job | None:
        """The job's record, or None if there is none (never enqueued, or expired)."""
        try:
            return self._store().get(job_id)
        except redis.RedisError as exc:
            where = maybe_sanitize_url(self.settings.redis_url)
            raise Unreachable(f"cannot read job state from {where}: {exc}") from exc

    def budget(self) -> Snapshot:
        """The fleet's NanoGPT budget as it stands (tasks/pacing/budget.py)."""
        s = self.settings
        store = self._store()
        budget = Budget(
            store.redis, rate_per_s=s.upstream_rate_per_s, burst=s.upstream_burst, clock=time.time
        )
        try:
            return budget.snapshot()
        except redis.RedisError as exc:
            where = maybe_sanitize_url(self.settings.redis_url)
            raise Unreachable(f"cannot read the budget from {where}: {exc}") from exc

    def lanes(self) -> tuple[list[granting.LaneWaiting], bool]:
        """The jobs waiting for a NanoGPT call by lane (priority, tenant), and whether those
        are all of them (tasks/sweeps/granting.py)."""
        try:
            return granting.waiting_by_lane(self._store().redis, time.time())
        except redis.RedisError as exc:
            where = maybe_sanitize_url(self.settings.redis_url)
            raise Unreachable(f"cannot read the wait set from {where}: {exc}") from exc

    def other_workers(self, *, timeout_s: float) -> list[str]:
        """Names of the workers already consuming this broker (they answer a ping)."""
        try:
            replies = self._app.control.ping(timeout=timeout_s)
        except (kombu.exceptions.OperationalError, OSError) as exc:
            raise Unreachable(f"cannot reach the broker at {self.broker}: {exc}") from exc
        return sorted(name for reply in replies or [] for name in reply)

    def _store(self) -> JobStore:
        if self._jobs is None:
            self._redis = redis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
            self._jobs = JobStore(self._redis, ttl_s=self.settings.job_ttl_s)
        return self._jobs

    def close(self) -> None:
        """Release the broker and Redis connections."""
        self._app.close()
        if self._redis is not None:
            self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
