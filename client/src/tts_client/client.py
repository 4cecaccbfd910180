""":class:`TTSClient`: send TTS jobs to the worker by name, read them, cancel and watch them.

It publishes the worker's task names to their queues with a Celery app of its own (JSON only;
on RabbitMQ the queues declared exactly as the worker declares them) and reads the job-state
Redis the worker writes (``TTS_REDIS_URL``). It imports no worker code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from kombu import Exchange, Queue

from tts_client import checks, contract, redaction
from tts_client.models import Job, Update

# Redis answers in microseconds on a healthy host; seconds of silence mean it is not there.
REDIS_TIMEOUT_S = 5.0
# One blocking read of the progress stream: after this much silence the watch reads the job
# record once, in case the stream lost its end (expired, or a worker that publishes none).
WATCH_BLOCK_MS = 2000
# Entries read at once: a job has a few dozen at most (the worker trims its stream to ~50).
WATCH_BATCH = 100
# How long cancel() waits for a worker to run tts.cancel: it queues behind the polls on
# tts.poll, which a healthy worker drains in well under a second.
CANCEL_WAIT_S = 10.0
CANCEL_CHECK_S = 0.1

# How long one publish waits (seconds) for the socket and for RabbitMQ's confirm: a node in
# memory or disk alarm blocks publishers and never confirms, so without it submit() would wait
# as long as the alarm. One retry on a fresh connection, then kombu's OperationalError (about
# 20 s in all, with the socket timeout on closing the blocked channel). The worker's own
# publishes have the same bounds (tasks/config/celery_config.py).
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_MAX_RETRIES = 1
# Every other read and write on a RabbitMQ connection (closing a blocked channel waits for a
# close-ok the node never sends).
BROKER_SOCKET_TIMEOUT_S = 5.0

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+")[0].lower()


def celery_app(broker_url: str) -> Celery:
    """A publishing-only Celery app for ``broker_url``, routed as the worker routes.

    On RabbitMQ the queues it sends to are declared as the worker declares them (quorum, bound
    by name to the topic exchange ``tts``): any other declaration is refused by RabbitMQ, and a
    countdown sent through them waits in RabbitMQ rather than in a worker.
    """
    app = Celery("tts-client", broker=broker_url, set_as_current=False)
    app.conf.task_serializer = "json"
    app.conf.accept_content = ["json"]
    if _scheme(broker_url) in AMQP_SCHEMES:
        exchange = Exchange(contract.AMQP_EXCHANGE, type="topic")
        app.conf.task_queues = [
            Queue(name, exchange, routing_key=name, queue_arguments=contract.QUORUM)
            for name in dict.fromkeys(contract.QUEUES.values())
        ]
        # A publish returns once RabbitMQ has the message, as the worker's own publishes do;
        # no read or write on the connection waits longer than BROKER_SOCKET_TIMEOUT_S.
        app.conf.broker_transport_options = {
            "confirm_publish": True,
            "read_timeout": BROKER_SOCKET_TIMEOUT_S,
            "write_timeout": BROKER_SOCKET_TIMEOUT_S,
        }
    return app


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        # A blocking XREAD holds the socket silent for a whole block: allow for it.
        socket_timeout=REDIS_TIMEOUT_S + WATCH_BLOCK_MS / 1000,
    )


class TTSClient:
    """The worker as an app sees it. One per process is enough (thread-safe; it pools its
    connections); :meth:`close` releases them.

    ``broker_url``: the worker's ``CELERY_BROKER_URL``. ``redis_url``: its ``TTS_REDIS_URL``,
    where job records live; by default the broker URL when the broker is Redis. Without one
    (RabbitMQ and no ``redis_url``) :meth:`submit` and :meth:`poll` work, and :meth:`get` and
    :meth:`watch` raise ``RuntimeError``.
    """

    def __init__(self, broker_url: str, *, redis_url: str | None = None) -> None:
        checks.text("broker_url", broker_url)
        checks.text("redis_url", redis_url, optional=True)
        if redis_url is None and _scheme(broker_url) in REDIS_SCHEMES:
            redis_url = broker_url
        self.broker_url = broker_url
        self.redis_url = redis_url
        self._app = celery_app(broker_url)
        # Made now (it connects on first use), so threads sharing the client share one pool.
        self._redis = None if redis_url is None else _redis_client(redis_url)

    # --- sending --------------------------------------------------------------------------

    def submit(
        self,
        text: str,
        model: str,
        *,
        voice: str | None = None,
        speed: float | None = None,
        response_format: str | None = None,
        instructions: str | None = None,
        stability: float | None = None,
        similarity_boost: float | None = None,
        style: float | None = None,
        notify_url: str | None = None,
        job_id: str | None = None,
        tenant: str | None = None,
        priority: str = contract.NORMAL,
        reuse: bool = True,
    ) -> str:
        """Send ``tts.submit_tts`` to ``tts.submit``; returns the job id (``job_id``, or a new
        UUID). A wrong keyword or type raises ``TypeError`` here, before anything is sent.

        The outcome is posted to ``notify_url`` (a signed webhook) and kept in the job record
        (:meth:`get`). Sending the same ``job_id`` again starts nothing new. ``tenant`` (who
        sends it; up to 64 of ``A-Z a-z 0-9 . _ : -``) and ``priority`` (``interactive``,
        ``normal`` or ``bulk``) decide how the account's NanoGPT calls are shared with other
        jobs; the worker refuses other values as ``INVALID_INPUT``. ``reuse=False``: never
        answered with an identical request's audio (workers with ``TTS_REUSE_TTL``).
        """
        checks.text("text", text)
        checks.text("model", model)
        for name, value in (
            ("voice", voice),
            ("response_format", response_format),
            ("instructions", instructions),
            ("notify_url", notify_url),
            ("job_id", job_id),
            ("tenant", tenant),
        ):
            checks.text(name, value, optional=True)
        checks.text("priority", priority)
        for name, number in (
            ("speed", speed),
            ("stability", stability),
            ("similarity_boost", similarity_boost),
            ("style", style),
        ):
            checks.number(name, number)
        checks.flag("reuse", reuse)
        job_id = str(uuid.uuid4()) if job_id is None else job_id
        options = {
            "voice": voice,
            "speed": speed,
            "response_format": response_format,
            "instructions": instructions,
            "stability": stability,
            "similarity_boost": similarity_boost,
            "style": style,
            "notify_url": notify_url,
            **_lane(tenant, priority),
        }
        kwargs = {key: value for key, value in options.items() if value is not None}
        if not reuse:  # sent only when it differs from the worker's default
            kwargs["reuse"] = False
        self._send(contract.SUBMIT_TTS, [text, model], {**kwargs, "job_id": job_id})
        return job_id

    def poll(
        self,
        run_id: str,
        model: str,
        *,
        cost: float | None = None,
        payment_source: str | None = None,
        is_api_request: bool = True,
        notify_url: str | None = None,
        job_id: str | None = None,
        tenant: str | None = None,
        priority: str = contract.NORMAL,
    ) -> str:
        """Send ``tts.poll_tts`` to ``tts.poll``: follow a run submitted to NanoGPT elsewhere
        (its ``runId``) to its end. Returns the job id: ``job_id``, or the run id. ``tenant``
        and ``priority``: as for :meth:`submit`."""
        checks.text("run_id", run_id)
        checks.text("model", model)
        checks.number("cost", cost)
        checks.text("payment_source", payment_source, optional=True)
        checks.flag("is_api_request", is_api_request)
        checks.text("notify_url", notify_url, optional=True)
        checks.text("job_id", job_id, optional=True)
        checks.text("tenant", tenant, optional=True)
        checks.text("priority", priority)
        job_id = run_id if job_id is None else job_id
        options = {
            "cost": cost,
            "payment_source": payment_source,
            "notify_url": notify_url,
            **_lane(tenant, priority),
        }
        kwargs = {key: value for key, value in options.items() if value is not None}
        kwargs |= {"is_api_request": is_api_request, "job_id": job_id}
        self._send(contract.POLL_TTS, [run_id, model], kwargs)
        return job_id

    def cancel(self, job_id: str) -> str:
        """End a job that has not ended (it fails with ``CANCELLED``; its webhook goes out).

        Returns ``cancelled``, ``already ended: <status>`` or ``unknown job`` (the answers of
        ``tts.cancel``), or ``sent`` when no answer could be read: there is no job-state Redis,
        or no worker ran the cancel within 10 s (it stays queued and acts when one does). A job
        that ended is answered from its record without sending anything. ``unknown job``: no
        worker has received a job of that id yet (its submit may still wait in the queue); the
        cancel is sent all the same, and the job ends ``CANCELLED`` (with its webhook, before
        any POST) if a worker receives it later. NanoGPT has no cancel: a run it accepted may
        still finish upstream, and is billed.
        """
        checks.text("job_id", job_id)
        if self.redis_url is None:
            self._send(contract.CANCEL, [job_id], {})
            return contract.CANCEL_SENT
        job = self.get(job_id)
        if job is not None and job.ended:
            return contract.already_ended(job.status)
        self._send(contract.CANCEL, [job_id], {})
        if job is None:
            return contract.UNKNOWN_JOB
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(CANCEL_CHECK_S)
            job = self.get(job_id)
            if job is None:  # its record expired meanwhile
                return contract.UNKNOWN_JOB
            if job.ended:
                cancelled = job.error is not None and job.error.code == "CANCELLED"
                return contract.CANCELLED if cancelled else contract.already_ended(job.status)
        return contract.CANCEL_SENT

    def _send(self, task: str, args: list[Any], kwargs: dict[str, Any]) -> str:
        result = self._app.send_task(
            task,
            args=args,
            kwargs=kwargs,
            queue=contract.QUEUES[task],
            # What task events and Flower show: text cut short, notify_url without its query.
            argsrepr=redaction.args_repr(args),
            kwargsrepr=redaction.kwargs_repr(kwargs),
            # A broker that takes the message but never confirms it raises, never hangs.
            timeout=PUBLISH_TIMEOUT_S,
            confirm_timeout=PUBLISH_TIMEOUT_S,
            retry_policy={"max_retries": PUBLISH_MAX_RETRIES},
        )
        return str(result.id)

    # --- reading --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job's record, or None if there is none (never received by a worker yet, or
        expired ``TTS_JOB_TTL`` after its end)."""
        checks.text("job_id", job_id)
        raw: dict[str, str] = self._store().hgetall(contract.JOB_KEY_PREFIX + job_id)  # type: ignore[assignment]
        # The id as asked, should the record lack its own field.
        return Job.from_hash({"job_id": job_id, **raw}) if raw else None

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[Update]:
        """The job's updates as they happen, ending with its last (completed or failed).

        A job that ended before the watch began yields one update at once. Otherwise every
        change the worker recorded is yielded, from the first, then each new one as it comes.
        ``timeout`` (seconds): raise ``TimeoutError`` if the job has not ended by then.
        """
        checks.text("job_id", job_id)
        checks.number("timeout", timeout)
        store = self._store()  # raises now, not at the first next(), without a Redis
        return self._follow(store, job_id, timeout)

    def _follow(self, store: redis.Redis, job_id: str, timeout: float | None) -> Iterator[Update]:
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        if job is not None and job.ended:
            yield Update.from_job(job)
            return
        key, last_id = contract.PROGRESS_KEY_PREFIX + job_id, "0"
        while True:
            block_ms = WATCH_BLOCK_MS
            if deadline is not None:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise TimeoutError(f"job {job_id} did not end within {timeout:g} s")
                # At least 1 ms: XREAD's BLOCK 0 would mean "forever".
                block_ms = max(1, min(block_ms, int(left_s * 1000)))
            answer: Any = store.xread({key: last_id}, count=WATCH_BATCH, block=block_ms)
            if answer:
                for entry_id, fields in answer[0][1]:
                    last_id = entry_id
                    update = Update.from_entry(job_id, fields)
                    yield update
                    if update.ended:
                        return
                continue
            # A quiet spell: the record says whether the job ended without a last entry.
            job = self.get(job_id)
            if job is not None and job.ended:
                yield Update.from_job(job)
                return

    def _store(self) -> redis.Redis:
        if self._redis is None:
            raise RuntimeError(
                "no job-state Redis: pass redis_url= (the worker's TTS_REDIS_URL) to TTSClient"
            )
        return self._redis

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the broker and Redis connections."""
        self._app.close()
        if self._redis is not None:
            self._redis.close()

    def __enter__(self) -> TTSClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _lane(tenant: str | None, priority: str) -> dict[str, str | None]:
    """The message's ``tenant`` and ``priority``; a default priority is left out, so a message
    that says nothing about its lane is the one sent before they existed."""
    return {"tenant": tenant, "priority": None if priority == contract.NORMAL else priority}
