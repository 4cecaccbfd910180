"""A task sent by name without ``queue=`` lands in Celery's default queue ``celery``: a worker
runs it only with TTS_CONSUME_DEFAULT_QUEUE on (an opt-in for a broker of its own); at its
defaults the queue is left to the app that owns it (tests/integration/test_shared_broker.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import redis
from celery import Celery

from tasks import names
from tests.integration.conftest import ELEVEN
from tests.support.stack import Lane, Spawn
from tests.support.worker import assert_runs_this_tree
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration


def send_bare(broker_url: str, run_id: str, notify_url: str) -> None:
    """What an app does with a Celery client it never configured: no queue, no routes."""
    with contextlib.closing(Celery(broker=broker_url)) as bare:
        bare.send_task(names.POLL_TTS, args=[run_id, ELEVEN], kwargs={"notify_url": notify_url})


def test_opted_in_a_send_without_queue_runs(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver, simulator: Simulator
) -> None:
    lane = lanes()
    worker = spawn(lane.env(TTS_CONSUME_DEFAULT_QUEUE="true")).start()
    assert_runs_this_tree(worker)
    run_id = simulator.create_run(model=ELEVEN)
    send_bare(lane.url, run_id, receiver.url)
    body = receiver.wait_for(run_id).json()
    assert body["type"] == "tts.completed"
    assert body["run_id"] == run_id


def test_at_its_defaults_the_default_queue_is_left_alone(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver, simulator: Simulator
) -> None:
    lane = lanes()
    off = spawn(lane.env()).start()
    assert_runs_this_tree(off)
    stray = simulator.create_run(model=ELEVEN)
    send_bare(lane.url, stray, receiver.url)
    # A job sent to its own queue afterwards runs: the worker is consuming, just not `celery`.
    probe = simulator.create_run(model=ELEVEN)
    lane.send(names.POLL_TTS, probe, ELEVEN, notify_url=receiver.url)
    receiver.wait_for(probe)
    client = redis.Redis.from_url(lane.url)
    try:
        assert client.llen(names.CELERY_DEFAULT_QUEUE) == 1
    finally:
        client.close()
    assert receiver.for_job(stray) == []
    assert simulator.status_polls(stray) == []
    # The same message runs as soon as a worker that opted in starts.
    spawn(lane.env(TTS_CONSUME_DEFAULT_QUEUE="true")).start()
    assert receiver.wait_for(stray).json()["type"] == "tts.completed"
