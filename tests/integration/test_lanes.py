"""Lanes through a real worker (issue 22): an interactive job sent behind a bulk import's
backlog is POSTed next, not after the backlog; every job still completes, once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest

from tasks import names
from tasks.record.jobs import WAIT_KEY
from tests.support.stack import API_KEY, ELEVEN, Lane, Spawn, wait_until, webhooks_per_job
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

BACKLOG = 24
# A slow budget, so the import's submits wait in line long enough to be overtaken.
ENV = {
    "TTS_UPSTREAM_RATE": "3",
    "TTS_UPSTREAM_BURST": "1",
    "TTS_POLL_TIMEOUT": "300",
    "TTS_POLL_INTERVAL": "0.5",
    "TTS_POLL_MAX_INTERVAL": "2",
}
_JOB = re.compile(r"^Lanes (\S+) ")


def test_an_interactive_job_overtakes_a_bulk_backlog(
    lanes: Callable[[], Lane], spawn: Spawn, receiver: Receiver
) -> None:
    with Simulator(api_key=API_KEY) as sim:
        lane = lanes()
        spawn(lane.env(NANOGPT_BASE_URL=sim.base_url, **ENV), concurrency=4).start()
        tag = uuid.uuid4().hex[:8]
        bulk = [f"bulk-{tag}-{n}" for n in range(BACKLOG)]
        for jid in bulk:
            lane.send(
                names.SUBMIT_TTS,
                f"Lanes {jid} [[sim pending=0]]",
                ELEVEN,
                notify_url=receiver.url,
                job_id=jid,
                tenant="importer",
                priority="bulk",
            )
        client = lane.store.redis
        # Most of the import's submits wait in line for the budget (submits score below 0).
        wait_until(lambda: client.zcount(WAIT_KEY, "-inf", "(0") >= BACKLOG - 6, timeout_s=60)
        app = f"app-{tag}"
        lane.send(
            names.SUBMIT_TTS,
            f"Lanes {app} [[sim pending=0]]",
            ELEVEN,
            notify_url=receiver.url,
            job_id=app,
            tenant="app",
            priority="interactive",
        )
        jids = {*bulk, app}
        counts = wait_until(
            lambda: (c := webhooks_per_job(receiver, jids)) and len(c) == len(jids) and c,
            timeout_s=120,
        )

    assert set(counts.values()) == {1}
    posts = [
        m.group(1)
        for r in sim.requests
        if r.method == "POST" and r.path == "/api/tts" and not r.limited and r.body
        if (m := _JOB.match(str(r.body.get("text", ""))))
    ]
    assert sorted(posts) == sorted(jids)  # one POST each
    # Oldest first (the default, and the one lane before issue 22), the app would be last.
    before_app = posts.index(app)
    assert before_app <= BACKLOG - 12, posts
    job = lane.store.get(app)
    assert job is not None
    assert (job.status, job.tenant, job.priority) == ("completed", "app", "interactive")
