"""A notify URL's tokens never reach a Celery event or the result backend (issue 13).

A worker with a result backend and task events on; the receiver answers 503 a few times, so the
notify task goes through ``Task.retry`` (task-retried events, retry states in the backend) before
the 200. Every event on the broker is captured, and every key of the backend dumped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery

from tasks import names
from tests.integration.conftest import ELEVEN, Responder, wait_until
from tests.reliability.test_promise import assert_runs_this_tree
from tests.support import redis_dump
from tests.support.stack import Lane, Spawn
from workers.receiver import Receiver

pytestmark = pytest.mark.integration

QUERY_TOKEN = "SECRET1-q-" + uuid.uuid4().hex
PATH_TOKEN = "SECRET2-p-" + uuid.uuid4().hex
REFUSALS = 3


@dataclass
class EventTap:
    """Every Celery event published on a broker, as text, captured by a receiver thread."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, ready: threading.Event) -> None:
        app = Celery("tap", broker=self.url)
        with app.connection() as conn:
            recv = app.events.Receiver(conn, handlers={"*": self.events.append})
            ready.set()
            while not self._stop.is_set():
                # Returns (socket.timeout, a TimeoutError) when no event came within a second.
                with contextlib.suppress(TimeoutError):
                    for _ in recv.itercapture(limit=None, timeout=1.0, wakeup=False):
                        if self._stop.is_set():
                            return

    def text(self) -> str:
        return "\n".join(repr(e) for e in self.events)


@pytest.fixture
def tap(lanes: Callable[[], Lane]) -> Iterator[tuple[Lane, EventTap, str]]:
    lane = lanes()
    # The result backend gets a database of its own: the job store beside the broker must keep
    # the real notify_url, the backend must not.
    backend_url = lanes().url
    tap = EventTap(lane.url)
    ready = threading.Event()

    thread = threading.Thread(target=tap.run, args=(ready,), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield lane, tap, backend_url
    tap._stop.set()
    thread.join(10)


def test_notify_url_tokens_reach_no_event_and_no_result(
    tap: tuple[Lane, EventTap, str], spawn: Spawn, receiver: Receiver, responder: Responder
) -> None:
    lane, events, backend_url = tap
    origin = receiver.url.removesuffix("/hook")
    path = f"/hooks/{PATH_TOKEN}/x?token={QUERY_TOKEN}"
    responder.plans[path] = [503] * REFUSALS
    worker = spawn(lane.env(CELERY_RESULT_BACKEND=backend_url)).start()
    assert_runs_this_tree(worker)
    jid = f"tokens-{uuid.uuid4().hex}"
    lane.send(
        names.SUBMIT_TTS,
        "Tokens stay home [[sim pending=1]]",
        ELEVEN,
        notify_url=origin + path,
        job_id=jid,
    )
    delivery = receiver.wait_for(jid)
    assert delivery.path == path  # the real URL was used, tokens and all
    assert len(receiver.for_job(jid)) == REFUSALS + 1
    wait_until(lambda: "task-succeeded" in events.text() and jid in events.text())
    wait_until(lambda: events.text().count("task-retried") >= REFUSALS)

    everything = events.text() + "\n" + redis_dump.dump(backend_url)
    assert "task-retried" in everything
    assert "celery-task-meta-" in _keys(backend_url)
    assert QUERY_TOKEN not in everything
    assert PATH_TOKEN not in everything
    assert origin in everything  # scheme and host are still shown


def _keys(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return " ".join(k.decode() for k in client.keys("*"))
    finally:
        client.close()


def test_unreachable_receiver_tokens_reach_no_event_and_no_result(
    tap: tuple[Lane, EventTap, str], spawn: Spawn
) -> None:
    """Connection refused: the ``requests`` error quotes the URL; no retry may carry it on."""
    lane, events, backend_url = tap
    env = lane.env(CELERY_RESULT_BACKEND=backend_url, TTS_WEBHOOK_RETRY_PERIOD="2")
    worker = spawn(env).start()
    assert_runs_this_tree(worker)
    jid = f"refused-{uuid.uuid4().hex}"
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    lane.send(
        names.SUBMIT_TTS,
        "Nobody home [[sim pending=1]]",
        ELEVEN,
        notify_url=f"http://127.0.0.1:{port}/hooks/{PATH_TOKEN}/x?token={QUERY_TOKEN}",
        job_id=jid,
    )
    wait_until(lambda: _notify_state(lane, jid) == "expired", timeout_s=30)
    wait_until(lambda: events.text().count("task-retried") >= 2)

    everything = events.text() + "\n" + redis_dump.dump(backend_url) + "\n" + worker.log
    assert "ConnectionError" in everything  # the failure is described, by kind
    assert QUERY_TOKEN not in everything
    assert PATH_TOKEN not in everything


def _notify_state(lane: Lane, job_id: str) -> str | None:
    job = lane.store.get(job_id)
    return job.notify_state if job else None
