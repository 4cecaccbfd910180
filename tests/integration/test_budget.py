"""The fleet's NanoGPT budget through real workers: two workers share one budget against a
simulator that refuses calls past its account limit, and a 429 that would outlast the deadline
ends the job as RATE_LIMITED."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tasks import names
from tasks.pacing.budget import BUDGET_KEY
from tasks.record.jobs import WAIT_KEY
from tests.support.stack import API_KEY, ELEVEN, Lane, Spawn, wait_until, webhooks_per_job
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

JOBS = 40
# The simulator's account limit, and a budget below it that two workers must share: a budget per
# worker (what Celery's rate_limit gives) would send 2 x 10 = 20 calls/s into a limit of 12.
ACCOUNT_LIMIT_PER_S = 12
BUDGET_PER_S = 10
# The deadline and poll interval of a production-like run: the shared 8 s deadline of the
# integration stack is not what these tests are about.
BUDGET_ENV = {
    "TTS_UPSTREAM_RATE": str(BUDGET_PER_S),
    "TTS_UPSTREAM_BURST": "1",
    "TTS_POLL_TIMEOUT": "300",
    "TTS_POLL_INTERVAL": "0.5",
    "TTS_POLL_MAX_INTERVAL": "2",
}


def test_two_workers_share_one_budget_and_stay_within_the_account_limit(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    with Simulator(api_key=API_KEY, rate_limit_per_s=ACCOUNT_LIMIT_PER_S) as sim:
        lane = lanes()
        env = lane.env(NANOGPT_BASE_URL=sim.base_url, **BUDGET_ENV)
        workers = [spawn(env, concurrency=4).start() for _ in range(2)]
        tag = uuid.uuid4().hex[:8]
        # The default path: no job_id, so each job is known by its message's task id.
        jids = {
            lane.send(
                names.SUBMIT_TTS,
                f"Budget {tag} {n} [[sim pending=2 queue=0]]",
                ELEVEN,
                notify_url=receiver.url,
            )
            for n in range(JOBS)
        }
        counts = wait_until(
            lambda: (c := webhooks_per_job(receiver, jids)) and len(c) == JOBS and c, timeout_s=120
        )

        assert set(counts.values()) == {1}
        calls = sim.calls()
        posts = 0
        for jid in jids:
            job = lane.store.get(jid)
            assert job is not None
            assert (job.status, job.polls) == ("completed", 3), job
            posts += job.posts
        # One submit and three status calls answered per job, none wasted; a POST sent again
        # was one the account limit refused (429: provably not accepted), never another.
        assert calls["/api/tts"].answered == JOBS
        assert calls["/api/tts/status"].answered == JOBS * 3
        assert posts == JOBS + calls["/api/tts"].refused
        answered = sum(c.answered for c in calls.values())
        refused = sum(c.refused for c in calls.values())
        assert refused <= 0.01 * (answered + refused), calls
        for w in workers:
            assert "Traceback" not in w.log, w.log[-3000:]


def test_a_429_that_would_outlast_the_deadline_ends_the_job_rate_limited(
    lanes: Callable[[], Lane], spawn: Spawn, simulator: Simulator, receiver: Receiver
) -> None:
    lane = lanes()
    # Retry-After 30 s may be honoured (the cap is 60 s), but the deadline is 4 s away.
    env = lane.env(
        TTS_POLL_TIMEOUT="4",
        TTS_RETRY_MAX_DELAY="60",
        NANOGPT_BASE_URL=simulator.base_url,
    )
    spawn(env, concurrency=2).start()
    jid = f"rl-{uuid.uuid4().hex}"
    lane.send(
        names.SUBMIT_TTS,
        "Rate limited [[sim pending=3 status_fail=429:30]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    wait_until(lambda: receiver.for_job(jid), timeout_s=30)

    job = lane.store.get(jid)
    assert job is not None
    assert job.outcome is not None
    error = job.outcome["error"]
    assert error["code"] == "RATE_LIMITED"
    assert "Rate limit exceeded" in error["message"]  # NanoGPT's own words: which limit
    assert job.polls == 0  # the only status call was refused; it was not retried


def test_turning_the_budget_off_sends_the_submits_that_wait_for_it(
    lanes: Callable[[], Lane], spawn: Spawn, simulator: Simulator, receiver: Receiver
) -> None:
    """Issue 19: with ``TTS_UPSTREAM_RATE=0``, a submit parked while the budget was on stayed
    ``submitting`` with 0 POSTs until it ended TIMEOUT: nothing sent the submits that wait for
    budget once there was none. The releaser of a worker without a budget sends them."""
    lane = lanes()
    client = lane.store.redis
    # A budget with no token for the next 1,000 s, on Redis' own clock (the scripts' clock).
    server_s = float(client.time()[0])
    client.hset(BUDGET_KEY, "tat", repr(server_s + 1000))
    budgeted = spawn(
        lane.env(TTS_UPSTREAM_RATE="1", TTS_UPSTREAM_BURST="1", TTS_POLL_TIMEOUT="300")
    )
    budgeted.start()
    jid = f"off-{uuid.uuid4().hex}"
    lane.send(
        names.SUBMIT_TTS, "Parked [[sim pending=1]]", ELEVEN, notify_url=receiver.url, job_id=jid
    )
    wait_until(lambda: client.zscore(WAIT_KEY, jid) is not None, timeout_s=30)
    job = lane.store.get(jid)
    assert job is not None
    assert (job.status, job.posts) == ("submitting", 0)
    budgeted.stop()

    # The deployment turns the budget off and restarts: the waiting submit is sent.
    spawn(lane.env(TTS_UPSTREAM_RATE="0", TTS_POLL_TIMEOUT="300")).start()
    wait_until(lambda: receiver.for_job(jid), timeout_s=45)
    job = lane.store.get(jid)
    assert job is not None
    assert (job.status, job.posts) == ("completed", 1), job
    assert client.zscore(WAIT_KEY, jid) is None
