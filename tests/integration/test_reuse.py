"""Identical requests served once (TTS_REUSE_TTL), through a real worker and the simulator:
the POSTs are counted where NanoGPT would bill them, the webhooks where the app gets them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tasks import names
from tests.support.stack import API_KEY, ELEVEN, Lane, Spawn, wait_until, webhooks_per_job
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

REUSE_ENV = {"TTS_REUSE_TTL": "600", "TTS_POLL_TIMEOUT": "60"}


def posts(sim: Simulator, tag: str) -> list[dict[str, Any]]:
    """The bodies of the POSTs whose text carries ``tag``."""
    return [
        r.body
        for r in sim.requests
        if r.method == "POST" and r.path.endswith("/tts") and r.body and tag in r.body["text"]
    ]


def bodies(receiver: Receiver, jids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's accepted webhook body (the tests check there is one each)."""
    out: dict[str, dict[str, Any]] = {}
    for delivery in receiver.accepted():
        body = delivery.json()
        if body.get("job_id") in jids:
            out[body["job_id"]] = body
    return out


def test_thirty_identical_submits_make_one_post_another_voice_its_own(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    """The issue's Done-when: 10 identical submits at once and 20 more after the first
    completes make one POST and 30 completed webhooks with the same audio; the same text with
    another voice makes its own POST; so does ``reuse=False``."""
    with Simulator(api_key=API_KEY) as sim:
        lane = lanes()
        worker = spawn(lane.env(NANOGPT_BASE_URL=sim.base_url, **REUSE_ENV)).start()
        tag = uuid.uuid4().hex[:10]
        text = f"Welcome back {tag}! [[sim pending=3 queue=1]]"

        def submit(**options: Any) -> str:
            return lane.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, **options)

        first = [submit(voice="Rachel") for _ in range(10)]
        wait_until(lambda: webhooks_per_job(receiver, set(first)), timeout_s=60)
        later = [submit(voice="Rachel") for _ in range(20)]
        other_voice = submit(voice="Adam")
        own = submit(voice="Rachel", reuse=False)
        everyone = [*first, *later, other_voice, own]
        counts = wait_until(
            lambda: (c := webhooks_per_job(receiver, set(everyone))) and len(c) == 32 and c,
            timeout_s=90,
        )

        assert set(counts.values()) == {1}  # one webhook per job
        got = bodies(receiver, everyone)
        identical = [got[j] for j in [*first, *later]]
        assert {b["type"] for b in identical} == {"tts.completed"}
        assert len({b["audio"]["sha256"] for b in identical}) == 1
        assert len({b["audio"]["path"] for b in identical}) == 1  # one file, not 30
        leaders = [b for b in identical if "reused_from" not in b]
        assert len(leaders) == 1
        source = leaders[0]["job_id"]
        assert all(
            b["reused_from"] == source and b["cost"] == 0 for b in identical if b is not leaders[0]
        )
        # Some of the first ten joined the leader in flight (the rest found it completed).
        followed = [j for j in first if (job := lane.store.get(j)) and job.reuse_leader == source]
        assert followed, "none of the ten sent at once waited on the leader"
        voices = sorted(body.get("voice", "") for body in posts(sim, tag))
        assert voices == [
            "Adam",
            "Rachel",
            "Rachel",
        ]  # the leader's, another voice's, reuse=False's
        for jid in (other_voice, own):
            assert got[jid]["type"] == "tts.completed"
            assert "reused_from" not in got[jid]
            assert got[jid]["audio"]["path"] != leaders[0]["audio"]["path"]
        assert "Traceback" not in worker.log, worker.log[-3000:]


def test_followers_complete_when_the_leader_fails_not_for_the_content(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    """The leader's POST gets no answer in time (SUBMIT_UNCONFIRMED: it may have been billed,
    never sent again); its followers are not failed with it: one of them makes its own POST,
    the others reuse its audio."""
    with Simulator(api_key=API_KEY) as sim:
        lane = lanes()
        # The first POST of this text answers after 2 s; the worker reads for 1 s.
        worker = spawn(lane.env(NANOGPT_BASE_URL=sim.base_url, **REUSE_ENV)).start()
        tag = uuid.uuid4().hex[:10]
        text = f"Slow start {tag} [[sim pending=2 submit_fail=slow:2]]"
        jids = [f"rf-{tag}-{n}" for n in range(5)]
        for jid in jids:
            lane.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)
        counts = wait_until(
            lambda: (c := webhooks_per_job(receiver, set(jids))) and len(c) == 5 and c,
            timeout_s=90,
        )

        assert set(counts.values()) == {1}
        got = bodies(receiver, jids)
        failed = [b for b in got.values() if b["type"] == "tts.failed"]
        assert [b["error"]["code"] for b in failed] == ["SUBMIT_UNCONFIRMED"]
        completed = [b for b in got.values() if b["type"] == "tts.completed"]
        assert len(completed) == 4
        second = [b for b in completed if "reused_from" not in b]
        assert len(second) == 1  # the follower that took over
        assert all(
            b.get("reused_from") == second[0]["job_id"] for b in completed if b is not second[0]
        )
        assert len(posts(sim, tag)) == 2  # the leader's, unanswered in time, and the take-over's
        assert "Traceback" not in worker.log, worker.log[-3000:]


def test_followers_outlive_a_killed_worker(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    """Followers wait in Redis, not in a worker: SIGKILL the worker while four identical
    requests wait on their leader's run, start another, and all five complete on one POST.
    A long recovery grace keeps the reconciler out of it: the leader's parked poll and its
    notify step's wake-up finish the jobs."""
    with Simulator(api_key=API_KEY) as sim:
        lane = lanes()
        env = lane.env(NANOGPT_BASE_URL=sim.base_url, TTS_RECOVERY_GRACE="600", **REUSE_ENV)
        first = spawn(env, concurrency=4).start()
        tag = uuid.uuid4().hex[:10]
        text = f"Kill me softly {tag} [[sim pending_s=3 queue=0]]"
        jids = [f"rk-{tag}-{n}" for n in range(5)]
        for jid in jids:
            lane.send(names.SUBMIT_TTS, text, ELEVEN, notify_url=receiver.url, job_id=jid)

        def ready() -> bool:
            """Four follow; the leader's POST was answered (its first poll is parked)."""
            jobs = [j for j in (lane.store.get(jid) for jid in jids) if j is not None]
            waiting = sum(1 for j in jobs if j.reuse_leader is not None)
            return waiting == 4 and any(j.status == "polling" for j in jobs)

        wait_until(ready, timeout_s=30)
        first.kill()  # SIGKILL, main process and pool
        second = spawn(env, concurrency=4).start()
        counts = wait_until(
            lambda: (c := webhooks_per_job(receiver, set(jids))) and len(c) == 5 and c,
            timeout_s=60,
        )

        assert set(counts.values()) == {1}
        got = bodies(receiver, jids)
        assert {b["type"] for b in got.values()} == {"tts.completed"}
        assert sum("reused_from" in b for b in got.values()) == 4
        assert len(posts(sim, tag)) == 1
        assert "Traceback" not in second.log, second.log[-3000:]
