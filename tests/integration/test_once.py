"""Exactly once: duplicate enqueues, redelivered steps and webhook retries never double it."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks import names
from tasks.record.jobs import JobStore
from tests.integration.conftest import ELEVEN, Responder, Send, wait_until
from workers.receiver import Receiver
from workers.simulator import Scenario, Simulator

pytestmark = pytest.mark.integration


def test_same_poll_enqueued_ten_times(
    send: Send, receiver: Receiver, simulator: Simulator, store: JobStore
) -> None:
    run_id = simulator.create_run(Scenario(pending_polls=3), model=ELEVEN)
    with ThreadPoolExecutor(10) as pool:
        list(
            pool.map(
                lambda _: send(names.POLL_TTS, run_id, ELEVEN, notify_url=receiver.url), range(10)
            )
        )
    receiver.wait_for(run_id)
    job = wait_until(lambda: (j := store.get(run_id)) and j.notify_state == "delivered" and j)
    assert job.polls == 4
    assert len(simulator.status_polls(run_id)) == 4  # one chain: 3 pending + 1 completed
    assert len(receiver.for_job(run_id)) == 1


def test_same_submit_enqueued_five_times(
    send: Send, receiver: Receiver, simulator: Simulator
) -> None:
    jid = f"dup-{uuid.uuid4().hex}"
    text = f"Once {jid} [[sim pending=1]]"
    for _ in range(5):
        send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
    receiver.wait_for(jid)
    posts = [
        r
        for r in simulator.requests
        if r.path == "/api/tts" and r.body and r.body.get("text") == text
    ]
    assert len(posts) == 1
    assert len(receiver.for_job(jid)) == 1


def test_finished_job_is_not_redone(
    send: Send, receiver: Receiver, simulator: Simulator, store: JobStore
) -> None:
    run_id = simulator.create_run(Scenario(pending_polls=0), model=ELEVEN)
    send(names.POLL_TTS, run_id, ELEVEN, notify_url=receiver.url)
    wait_until(lambda: (j := store.get(run_id)) and j.notify_state == "delivered")
    send(names.POLL_TTS, run_id, ELEVEN, notify_url=receiver.url)
    send(names.DOWNLOAD_AUDIO, run_id)  # a stray redelivery of the download step
    send(names.NOTIFY, run_id)  # and of the notify step
    probe = simulator.create_run(Scenario(pending_polls=0), model=ELEVEN)
    send(names.POLL_TTS, probe, ELEVEN, notify_url=receiver.url)
    receiver.wait_for(probe)  # the worker has worked past the strays
    assert len(simulator.status_polls(run_id)) == 1
    assert len(receiver.for_job(run_id)) == 1


def test_refused_webhook_is_retried_with_the_same_id(
    send: Send, receiver: Receiver, responder: Responder, store: JobStore
) -> None:
    jid = f"hook-{uuid.uuid4().hex}"
    url = f"{receiver.url}/{jid}"
    responder.plans[f"/hook/{jid}"] = [500, 503, 429]
    send(names.SUBMIT_TTS, "Retry me [[sim pending=0]]", ELEVEN, notify_url=url, job_id=jid)
    receiver.wait_for(jid)
    attempts = receiver.for_job(jid)
    assert [d.answered for d in attempts] == [500, 503, 429, 200]
    assert len({d.headers["webhook-id"] for d in attempts}) == 1
    assert all(d.verified for d in attempts)
    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "delivered" and j)
    assert job.notify_attempts == 4


def test_410_stops_delivery(
    send: Send, receiver: Receiver, responder: Responder, store: JobStore
) -> None:
    jid = f"gone-{uuid.uuid4().hex}"
    responder.plans[f"/hook/{jid}"] = [410, 500, 500]
    send(
        names.SUBMIT_TTS,
        "Gone [[sim pending=0]]",
        ELEVEN,
        notify_url=f"{receiver.url}/{jid}",
        job_id=jid,
    )
    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "gone" and j)
    assert job.status == "completed"
    assert [d.answered for d in receiver.for_job(jid)] == [410]


@pytest.mark.parametrize("status", [302, 404])
def test_hopeless_answer_stops_delivery_after_one_attempt(
    send: Send, receiver: Receiver, responder: Responder, store: JobStore, status: int
) -> None:
    jid = f"hopeless-{status}-{uuid.uuid4().hex}"
    responder.plans[f"/hook/{jid}"] = [status, 200]
    text = "Nobody home [[sim pending=0]]"
    send(names.SUBMIT_TTS, text, ELEVEN, notify_url=f"{receiver.url}/{jid}", job_id=jid)
    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "refused" and j)
    assert job.notify_attempts == 1
    time.sleep(1.0)  # several retry delays of the shared worker (0.2 s, up to 0.5 s)
    assert [d.answered for d in receiver.for_job(jid)] == [status]


def test_unsafe_webhook_url_is_refused(send: Send, store: JobStore) -> None:
    jid = f"ssrf-{uuid.uuid4().hex}"
    send(
        names.SUBMIT_TTS,
        "Hook elsewhere [[sim pending=0]]",
        ELEVEN,
        notify_url="https://127.0.0.2:9/hook",
        job_id=jid,
    )
    job = wait_until(lambda: (j := store.get(jid)) and j.notify_state == "refused" and j)
    assert job.status == "completed"
