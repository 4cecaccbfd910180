"""RabbitMQ as the broker: quorum queues on a topic exchange, waiting polls parked in Redis
(the one wait path, issue 21), retries and callers' countdowns held by RabbitMQ.

A real worker runs against a private virtual host on the local RabbitMQ (created here with
``rabbitmqctl``, deleted afterwards), with job state in the private test Redis. Off CI the module
skips, with the reason, when RabbitMQ or ``rabbitmqctl`` is not there; with ``CI=true`` it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from celery import Celery
from celery.utils.nodenames import host_format
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import level_name

from tasks import names
from tasks.record.jobs import WAIT_KEY
from tests.integration.conftest import ELEVEN, Responder, wait_until
from tests.support.stack import Lane
from tests.support.worker import WorkerProcess
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672
# Celery's delayed-delivery queues: celery_delayed_0 holds 1 s, celery_delayed_27 2**27 s.
DELAY_QUEUES = [level_name(level) for level in range(28)]
OUR_QUEUES = sorted(set(names.QUEUES.values()))
# Long enough that the sampler sees every wait, short enough for a quick test.
POLL_WAIT_S = "3"
# The test worker's pool (WorkerProcess's default) times the config's prefetch multiplier.
WORKER_PREFETCH = 4 * 4
# One job here takes ~10 s (three 3 s waits); far more means it is stuck.
JOB_TIMEOUT_S = 40.0
# rabbitmqctl boots an Erlang VM per call: about a second each.
RABBITMQCTL_TIMEOUT_S = 30.0


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def _rows(*args: str) -> list[tuple[str, ...]]:
    """``rabbitmqctl list_*`` output as rows of columns, header row dropped."""
    lines = [line for line in _rabbitmqctl(*args).splitlines() if line.strip()]
    return [tuple(line.split("\t")) for line in lines[1:]]


def _table(*args: str) -> dict[str, tuple[str, ...]]:
    """``rabbitmqctl list_*`` output as {first column: the other columns}."""
    return {row[0]: row[1:] for row in _rows(*args)}


def _unavailable() -> str | None:
    """Why these tests cannot run here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not on PATH (needed to create a private vhost)"
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ on {AMQP_HOST}:{AMQP_PORT}: {exc}"
    try:
        _rabbitmqctl("list_vhosts")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"rabbitmqctl cannot manage the local RabbitMQ: {exc}"
    return None


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A virtual host of our own: no other worker sees its queues; deleted at the end."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs RabbitMQ: {reason}")
        pytest.skip(reason)
    name = f"tts-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="module")
def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"


@pytest.fixture(scope="module")
def lane(lanes: Callable[[], Lane]) -> Lane:
    """A Redis database of our own for job state (its Redis broker side stays unused)."""
    return lanes()


@pytest.fixture(scope="module")
def rabbit_worker(
    amqp_url: str, lane: Lane, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    env = lane.env(
        CELERY_BROKER_URL=amqp_url,
        TTS_REDIS_URL=lane.url,
        TTS_POLL_INTERVAL=POLL_WAIT_S,
        TTS_POLL_MAX_INTERVAL=POLL_WAIT_S,
        TTS_POLL_TIMEOUT="45",
        # A virtual host of its own: its `celery` queue is ours (test_a_send_without_queue_...).
        TTS_CONSUME_DEFAULT_QUEUE="true",
        # The retry backoffs stay WORKER_ENV's sub-second ones, on purpose: the native-delay
        # path must turn them into whole seconds (test_sub_second_retries_wait_in_rabbitmq).
    )
    proc = WorkerProcess(env, tmp_path_factory.mktemp("rabbit") / "worker.log").start()
    yield proc
    proc.stop()


# The two caller set-ups the README's RabbitMQ section gives. The minimal one lets Celery create
# the queues it sends to as quorum queues (plus a direct exchange per queue, which nothing else
# uses); the full one declares them exactly as the worker does, so its countdowns wait in
# RabbitMQ too.
MINIMAL_CALLER = {"task_create_missing_queue_type": "quorum"}


def full_caller_queues() -> list[Queue]:
    tts = Exchange("tts", type="topic")
    quorum = {"x-queue-type": "quorum"}
    return [Queue(q, tts, routing_key=q, queue_arguments=quorum) for q in OUR_QUEUES]


@pytest.fixture(scope="module")
def rabbit_caller(amqp_url: str) -> Iterator[Celery]:
    """An app that sends by name, set up as the README's RabbitMQ section says (the full way)."""
    app = Celery("rabbit-caller", broker=amqp_url)
    app.conf.task_serializer = "json"
    app.conf.task_queues = full_caller_queues()
    yield app
    app.close()


@dataclass
class Sample:
    in_broker: int  # messages waiting in Celery's delayed-delivery queues
    held_early: list[Any]  # tasks the worker holds whose ETA is still ahead
    parked: bool = False  # the followed job waits in tts:wait


class Sampler:
    """Looks at the broker and the worker side by side while a job waits."""

    def __init__(
        self, amqp_url: str, caller: Celery, worker: WorkerProcess, lane: Lane | None = None
    ) -> None:
        self.connection = Connection(amqp_url)
        self.lane = lane
        self.job_id = ""
        self.caller = caller
        self.node = host_format(worker.name)
        self.samples: list[Sample] = []

    def in_broker(self) -> int:
        channel: Any = self.connection.default_channel
        # A passive declare answers with the queue's ready-message count, exactly and at once
        # (rabbitmqctl's figures lag by seconds on quorum queues).
        return sum(channel.queue_declare(q, passive=True).message_count for q in DELAY_QUEUES)

    def take(self) -> Sample:
        in_broker = self.in_broker()
        replies = self.caller.control.inspect(destination=[self.node], timeout=5).scheduled()
        answered_at = datetime.now().astimezone()
        assert replies is not None, "the worker did not answer inspect"
        assert self.node in replies, replies
        held_early = [
            entry
            for entry in replies[self.node]
            if datetime.fromisoformat(entry["eta"]) > answered_at
        ]
        parked = self.lane is not None and (
            self.lane.store.redis.zscore(WAIT_KEY, self.job_id) is not None
        )
        sample = Sample(in_broker, held_early, parked)
        self.samples.append(sample)
        return sample

    def close(self) -> None:
        self.connection.release()


def test_queues_are_quorum_on_a_topic_exchange(vhost: str, rabbit_worker: WorkerProcess) -> None:
    queues = _table("list_queues", "-p", vhost, "name", "type", "durable")
    for name in OUR_QUEUES + DELAY_QUEUES:
        assert queues.get(name) == ("quorum", "true"), (name, queues.get(name))
    exchanges = _table("list_exchanges", "-p", vhost, "name", "type")
    assert exchanges["tts"] == ("topic",)
    assert exchanges["celery_delayed_delivery"] == ("topic",)
    bindings = set(
        _rows("list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key")
    )
    for name in OUR_QUEUES:
        # Sent now: through "tts" by the queue's name. Sent with a countdown: Celery's delivery
        # exchange hands the due message to "tts", which routes it on by "<delay bits>.<name>".
        assert ("tts", name, name) in bindings
        assert ("celery_delayed_delivery", "tts", f"#.{name}") in bindings
        assert ("tts", name, f"#.{name}") in bindings
    # Quorum queues have no global QoS: Celery sets the prefetch per consumer, one per queue.
    consumers = _rows("list_consumers", "-p", vhost, "queue_name", "prefetch_count")
    for name in OUR_QUEUES:
        assert (name, str(WORKER_PREFETCH)) in consumers, consumers


def _follow(sampler: Sampler, receiver: Receiver, job_id: str) -> None:
    """Sample the broker and the worker until the job's webhook is accepted."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(200 <= d.answered < 300 for d in receiver.for_job(job_id)):
            return
        sampler.take()


def test_waiting_polls_wait_parked_in_redis(
    vhost: str,
    amqp_url: str,
    rabbit_worker: WorkerProcess,
    rabbit_caller: Celery,
    lane: Lane,
    receiver: Receiver,
    simulator: Simulator,
) -> None:
    jid = f"it-rabbit-{uuid.uuid4().hex}"
    with contextlib.closing(Sampler(amqp_url, rabbit_caller, rabbit_worker, lane)) as sampler:
        sampler.job_id = jid
        rabbit_caller.send_task(
            names.SUBMIT_TTS,
            args=["Waiting in the broker [[sim pending=3]]", ELEVEN],
            kwargs={"notify_url": receiver.url, "job_id": jid},
            queue=names.SUBMIT_QUEUE,
        )
        _follow(sampler, receiver, jid)
        left_in_broker = sampler.in_broker()
        # Publisher confirms: the worker's publishing channels are in confirm mode.
        channels = _rows("list_channels", "vhost", "confirm")

    assert receiver.wait_for(jid, timeout_s=1).json()["type"] == "tts.completed"
    job = wait_until(lambda: (j := lane.store.get(jid)) and j.notify_state == "delivered" and j)
    assert job.status == "completed"
    assert job.polls == 4  # three pending answers, then completed
    assert len(simulator.status_polls(job.run_id)) == 4
    assert len(receiver.for_job(jid)) == 1
    # The waiting polls were parked in Redis, on RabbitMQ as on a Redis broker ...
    assert any(s.parked for s in sampler.samples), sampler.samples
    # ... neither in RabbitMQ's delayed-delivery queues nor in the worker ahead of their time.
    assert all(s.in_broker == 0 for s in sampler.samples), sampler.samples
    assert not [s.held_early for s in sampler.samples if s.held_early]
    assert left_in_broker == 0
    assert (vhost, "true") in channels, channels


def test_sub_second_retries_wait_in_rabbitmq(
    amqp_url: str,
    rabbit_worker: WorkerProcess,
    rabbit_caller: Celery,
    lane: Lane,
    receiver: Receiver,
    responder: Responder,
    simulator: Simulator,
) -> None:
    """A status call and a webhook each refused once: their retries (0.05-0.5 s backoffs under
    WORKER_ENV) go through the broker as whole seconds instead of failing to publish."""
    jid = f"it-rabbit-retry-{uuid.uuid4().hex}"
    responder.plans[f"/hook/{jid}"] = [503]
    with contextlib.closing(Sampler(amqp_url, rabbit_caller, rabbit_worker)) as sampler:
        rabbit_caller.send_task(
            names.SUBMIT_TTS,
            args=["Flaky [[sim pending=0 status_fail=503]]", ELEVEN],
            kwargs={"notify_url": f"{receiver.url}/{jid}", "job_id": jid},
            queue=names.SUBMIT_QUEUE,
        )
        _follow(sampler, receiver, jid)

    assert [d.answered for d in receiver.for_job(jid)] == [503, 200]
    job = wait_until(lambda: (j := lane.store.get(jid)) and j.notify_state == "delivered" and j)
    assert job.status == "completed"
    assert len(simulator.status_polls(job.run_id)) == 2  # refused once, then completed
    assert any(s.in_broker > 0 for s in sampler.samples), sampler.samples
    assert not [s.held_early for s in sampler.samples if s.held_early]


def test_a_callers_countdown_waits_in_rabbitmq(
    amqp_url: str,
    rabbit_worker: WorkerProcess,
    rabbit_caller: Celery,
    receiver: Receiver,
) -> None:
    """The full caller set-up: a submit sent with a countdown is held by RabbitMQ, not a worker."""
    jid = f"it-rabbit-later-{uuid.uuid4().hex}"
    with contextlib.closing(Sampler(amqp_url, rabbit_caller, rabbit_worker)) as sampler:
        rabbit_caller.send_task(
            names.SUBMIT_TTS,
            args=["Later [[sim mode=sync_json]]", ELEVEN],
            kwargs={"notify_url": receiver.url, "job_id": jid},
            queue=names.SUBMIT_QUEUE,
            countdown=2,
        )
        _follow(sampler, receiver, jid)

    assert receiver.wait_for(jid, timeout_s=1).json()["type"] == "tts.completed"
    assert any(s.in_broker == 1 for s in sampler.samples), sampler.samples
    assert not [s.held_early for s in sampler.samples if s.held_early]


# A separate process, as a real caller is: in this one, kombu's producer pool (shared by every
# app on the same broker URL) remembers that the queue was declared already and skips the check.
CALLER_SCRIPT = """
import json, sys
from celery import Celery
url, config, name, queue, args, kwargs = sys.argv[1:]
app = Celery("caller", broker=url)
app.conf.update(json.loads(config))
try:
    app.send_task(name, args=json.loads(args), kwargs=json.loads(kwargs), queue=queue)
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("sent")
"""


def _send_from_another_process(amqp_url: str, config: dict[str, Any], **kwargs: Any) -> str:
    argv = [
        sys.executable,
        "-c",
        CALLER_SCRIPT,
        amqp_url,
        json.dumps(config),
        names.SUBMIT_TTS,
        names.SUBMIT_QUEUE,
        json.dumps(["By name [[sim mode=sync_json]]", ELEVEN]),
        json.dumps(kwargs),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip() + done.stderr


def test_a_caller_with_celerys_defaults_is_refused(
    amqp_url: str, rabbit_worker: WorkerProcess, receiver: Receiver
) -> None:
    """Celery's default declares a classic queue, which RabbitMQ refuses: the send raises."""
    jid = f"it-rabbit-default-{uuid.uuid4().hex}"
    answer = _send_from_another_process(amqp_url, {}, notify_url=receiver.url, job_id=jid)
    assert answer.startswith("PreconditionFailed"), answer
    assert "inequivalent arg 'x-queue-type'" in answer


def test_the_minimal_caller_set_up_works(
    amqp_url: str, rabbit_worker: WorkerProcess, receiver: Receiver
) -> None:
    jid = f"it-rabbit-minimal-{uuid.uuid4().hex}"
    answer = _send_from_another_process(
        amqp_url, MINIMAL_CALLER, notify_url=receiver.url, job_id=jid
    )
    assert answer == "sent"
    assert receiver.wait_for(jid).json()["type"] == "tts.completed"


def test_a_send_without_queue_runs_from_the_classic_default_queue(
    vhost: str,
    amqp_url: str,
    rabbit_worker: WorkerProcess,
    receiver: Receiver,
    simulator: Simulator,
) -> None:
    """A client with no configuration sends to `celery`, declared classic on a direct exchange;
    the worker declares it the same way (no PreconditionFailed on either side) and runs it."""
    run_id = simulator.create_run(model=ELEVEN)
    with contextlib.closing(Celery(broker=amqp_url)) as bare:
        bare.send_task(names.POLL_TTS, args=[run_id, ELEVEN], kwargs={"notify_url": receiver.url})
    assert receiver.wait_for(run_id, timeout_s=JOB_TIMEOUT_S).json()["type"] == "tts.completed"
    queues = _table("list_queues", "-p", vhost, "name", "type", "durable")
    assert queues[names.CELERY_DEFAULT_QUEUE] == ("classic", "true")
