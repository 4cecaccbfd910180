"""Nothing lost, nothing twice: each test injects one fault into real processes and measures.

Rows of RELIABILITY.md. Run with ``.venv/bin/pytest tests/reliability -s`` (the table is printed
at the end and written to tests/reliability/last-run.md).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.names import QUEUES
from tasks.webhooks.delivery import message_id
from tests.reliability.rig import MODEL, RIG_ENV, SECRET, Figures, Rig
from tests.support.audio_host import AudioHost
from workers.embedded_redis import free_port
from workers.receiver import Delivery, Receiver
from workers.simulator import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# How long the webhook receiver refuses connections: past its 2 s and 4 s retry delays.
RECEIVER_REFUSING_S = 5.0
# The message of a download whose connection was refused (tasks/net/http_errors.py: mapped).
# A step's retry as the worker logs it (tasks/steps/base.py, retry_or_fail): its planned wait.
RETRY_PLANNED = re.compile(r"; retry \d+ in ([0-9.]+)s")
REFUSED_DOWNLOAD = "download: ConnectionError"
REFUSED_WEBHOOK = "webhook: ConnectionError"

# How long the webhook receiver stays down. The issue asks for ten minutes at the rig's webhook
# retry delays (2 s doubling to 30 s); the suite runs the same outage at a tenth of the time: the
# outage and both delays scaled by WEBHOOK_TIME_SCALE, so each job sees the same attempts at
# the same points of the outage. TTS_RELIABILITY_WEBHOOK_OUTAGE_S=600 runs it at full length.
FULL_WEBHOOK_OUTAGE_S = 600.0
WEBHOOK_OUTAGE_S = float(os.environ.get("TTS_RELIABILITY_WEBHOOK_OUTAGE_S", "60"))
WEBHOOK_TIME_SCALE = WEBHOOK_OUTAGE_S / FULL_WEBHOOK_OUTAGE_S


def check(figures: Figures, report: list[Figures]) -> None:
    report.append(figures)
    assert figures.lost == 0, figures
    assert figures.duplicated == 0, figures


def test_sigkill_whole_worker(rig: Rig, report: list[Figures]) -> None:
    worker = rig.start_worker()
    ids = rig.submit(200, "pending_s=16 pending=1")
    rig.wait_status(ids, {"polling"}, timeout_s=60)
    killed_at = time.time()
    worker.kill()  # main process and pool children, countdowns held in memory with them
    rig.start_worker()
    tally = rig.tally(ids, timeout_s=120)
    recovery_s = tally.last_at - killed_at
    check(
        Figures(
            "SIGKILL the whole worker mid-run, start a new one",
            200,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            recovery_s,
        ),
        report,
    )
    assert recovery_s <= 60


def test_sigkill_redis(rig: Rig, report: list[Figures]) -> None:
    rig.start_worker()
    supervisor = rig.supervise()
    ids = rig.submit(200, "pending_s=16 pending=1")
    rig.wait_status(ids, {"polling"}, timeout_s=60)
    time.sleep(1.5)  # appendfsync everysec: what the callers were told is on disk
    killed_at = time.time()
    rig.redis.kill()
    time.sleep(3)
    rig.redis.start()
    tally = rig.tally(ids, timeout_s=120)
    supervisor.set()
    recovery_s = tally.last_at - killed_at
    check(
        Figures(
            "SIGKILL redis-server (AOF everysec), restart 3 s later",
            200,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            recovery_s,
            f"worker restarts by its supervisor: {rig.restarts}",
        ),
        report,
    )
    assert recovery_s <= 60


def test_warm_shutdown_with_waiting_polls(rig: Rig, report: list[Figures]) -> None:
    worker = rig.start_worker()
    ids = rig.submit(200, "pending_s=16 pending=1")
    rig.wait_status(ids, {"polling"}, timeout_s=60)
    stopped_at = time.time()
    worker.stop()  # SIGTERM: warm shutdown while it holds countdown polls
    rig.start_worker()
    tally = rig.tally(ids, timeout_s=120)
    check(
        Figures(
            "SIGTERM (warm shutdown) holding waiting polls",
            200,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            tally.last_at - stopped_at,
        ),
        report,
    )


def test_pool_child_killed_mid_task(rig: Rig, report: list[Figures]) -> None:
    worker = rig.start_worker(concurrency=4)
    rig.sim.outage = "slow:1"  # every status call takes a second: tasks are caught mid-flight
    ids = rig.submit(50, "pending=1")
    killed = 0
    for _ in range(3):
        time.sleep(2)
        killed += len(rig.kill_children(worker))
    rig.sim.outage = None
    tally = rig.tally(ids, timeout_s=120)
    check(
        Figures(
            "pool children SIGKILLed mid-task (3 rounds)",
            50,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            note=f"{killed} children killed",
        ),
        report,
    )
    assert killed >= 3


def test_upstream_5xx_for_30s(rig: Rig, report: list[Figures]) -> None:
    rig.start_worker()
    ids = rig.submit(100, "pending_s=12 pending=1")
    rig.wait_status(ids, {"polling"}, timeout_s=60)
    rig.sim.outage = "500"
    time.sleep(30)
    rig.sim.outage = None
    recovered_at = time.time()
    tally = rig.tally(ids, timeout_s=120)
    gaps = []
    for body in tally.bodies.values():
        times = [r.at for r in rig.sim.status_polls(body["run_id"])]
        gaps += [b - a for a, b in itertools.pairwise(times)]
    max_gap_s = max(gaps)
    completed = sum(b["type"] == "tts.completed" for b in tally.bodies.values())
    check(
        Figures(
            "upstream answers 5xx for 30 s",
            100,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            tally.last_at - recovered_at,
            f"{completed} completed; longest wait between polls {max_gap_s:.1f} s",
        ),
        report,
    )
    assert completed == 100
    # Backoff bounded: every retry the worker planned waits at most TTS_RETRY_MAX_DELAY (10 s),
    # read from its log. The gaps NanoGPT saw (the figure above) add the release and a free pool
    # process on cores the suite shares: a figure, not a check (CI saw 16.5 s beside 10.0 s).
    planned = [
        float(delay)
        for worker in rig.workers
        for delay in RETRY_PLANNED.findall(worker.log_path.read_text(errors="replace"))
    ]
    assert len(planned) >= 100, "every job retried through the outage"
    assert max(planned) <= float(RIG_ENV["TTS_RETRY_MAX_DELAY"])


def test_429_storm(rig: Rig, report: list[Figures]) -> None:
    rig.start_worker()
    ids = rig.submit(100, "pending_s=10 pending=1")
    rig.wait_status(ids, {"polling"}, timeout_s=60)
    storm_from = time.time()
    rig.sim.outage = "429:3"
    time.sleep(12)
    rig.sim.outage = None
    storm_to = time.time()
    tally = rig.tally(ids, timeout_s=120)
    early, refused = 0, 0
    for body in tally.bodies.values():
        polls = rig.sim.status_polls(body["run_id"])
        for a, b in itertools.pairwise(polls):
            if storm_from + 0.05 < a.at < storm_to - 0.05:  # surely answered 429
                refused += 1
                early += b.at - a.at < 3.0
    check(
        Figures(
            "429 storm with Retry-After: 3 for 12 s",
            100,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            note=f"{refused} polls refused, {early} next polls earlier than allowed",
        ),
        report,
    )
    assert refused > 0
    assert early == 0


@pytest.mark.parametrize("audio", ["drip:0.2", "hang"])
def test_stalled_audio_host(audio: str, rig: Rig, report: list[Figures]) -> None:
    rig.start_worker(concurrency=4)
    ids = rig.submit(10, f"pending=0 audio={audio}")
    tally = rig.tally(ids, timeout_s=180)
    codes = {b.get("error", {}).get("code") for b in tally.bodies.values()}
    attempts: dict[str, list[float]] = {}
    for r in rig.sim.requests:
        if r.path.startswith("/audio/"):
            attempts.setdefault(r.path, []).append(r.at)
    check(
        Figures(
            f"audio host {'drip-feeds bytes' if audio != 'hang' else 'never answers'}",
            10,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            note=f"outcomes {sorted(c or 'completed' for c in codes)}; "
            f"{sum(map(len, attempts.values()))} download attempts",
        ),
        report,
    )
    assert codes == {"DOWNLOAD_FAILED"}
    # each attempt ends at the wall-clock limit (2 s) or one read timeout (2 s): 4 attempts
    # (first + 3 retries) fit in well under a minute per job
    assert all(len(times) == 4 for times in attempts.values())


def wait_for(probe: Callable[[], bool], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout_s}s")
        time.sleep(0.1)


def test_audio_host_refuses_then_listens(rig: Rig, report: list[Figures]) -> None:
    # Nothing listens on the audioUrl's port (bound, then closed) until every job's download
    # has been refused at least once; then an audio host starts on that very port.
    port = free_port()
    rig.start_worker(concurrency=4)
    ids = rig.submit(10, f"pending=0 audio_url=http://127.0.0.1:{port}/{{run_id}}.wav")
    wait_for(
        lambda: all(
            j is not None and j.last_error == REFUSED_DOWNLOAD for j in rig.jobs(ids).values()
        ),
        timeout_s=60,
    )
    listening_at = time.time()
    with AudioHost(port) as host:
        tally = rig.tally(ids, timeout_s=60)
    codes = {b.get("error", {}).get("code") for b in tally.bodies.values()}
    check(
        Figures(
            "audio host refuses connections, then listens (each job refused first)",
            10,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            tally.last_at - listening_at,
            f"outcomes {sorted(c or 'completed' for c in codes)}; "
            f"{len(host.paths)} downloads once it listened",
        ),
        report,
    )
    assert codes == {None}  # all completed: the refusal was retried, not the outcome
    assert sorted(host.paths) == sorted(f"/{b['run_id']}.wav" for b in tally.bodies.values())
    assert tally.repeats == 0
    # The simulator (NanoGPT) was asked for each job once: a download fault never re-POSTs.
    assert sorted(rig.posts().values()) == [1] * 10


def test_webhook_receiver_refuses(rig: Rig, report: list[Figures]) -> None:
    # Nothing listens on the notify_url's port: each webhook is refused (not answered 5xx)
    # until the receiver starts again on that port.
    rig.stop_receiver()
    rig.start_worker()
    ids = rig.submit(10, "pending=1")
    wait_for(
        lambda: all(j is not None and j.notify_attempts >= 2 for j in rig.jobs(ids).values()),
        timeout_s=60,
    )
    time.sleep(RECEIVER_REFUSING_S)
    before = {jid: j for jid, j in rig.jobs(ids).items() if j is not None}
    notify_errors = {rig.store.redis.hget(rig.store.key(jid), "notify_error") for jid in ids}
    assert notify_errors == {REFUSED_WEBHOOK}  # refused, not answered: no receiver to answer
    refused = {jid: j.notify_attempts for jid, j in before.items()}
    rig.start_receiver()
    up_at = time.time()
    tally = rig.tally(ids, timeout_s=120)
    ids_per_job: dict[str, set[str]] = {}
    for d in rig.deliveries():
        ids_per_job.setdefault(d.json()["job_id"], set()).add(d.headers["webhook-id"])
    check(
        Figures(
            f"webhook receiver refuses connections for {RECEIVER_REFUSING_S:.0f} s "
            "after each job's second attempt",
            10,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            tally.last_at - up_at,
            f"at least {sum(refused.values())} attempts refused, then one delivery per job",
        ),
        report,
    )
    # Delivered under the webhook-id the refused attempts carried: the one made from the
    # outcome recorded before the receiver was back.
    assert ids_per_job == {jid: {message_id(jid, j.outcome_id)} for jid, j in before.items()}
    after = {jid: j for jid, j in rig.jobs(ids).items() if j is not None}
    assert {jid: j.outcome_id for jid, j in after.items()} == {
        jid: j.outcome_id for jid, j in before.items()
    }
    assert {j.notify_state for j in after.values()} == {"delivered"}
    assert tally.repeats == 0
    assert {b["type"] for b in tally.bodies.values()} == {"tts.completed"}
    assert len(rig.deliveries()) == 10  # nothing reached the receiver while it refused


# The rig's webhook read timeout (TTS_HTTP_READ_TIMEOUT) and a receiver's answer under, over it.
WEBHOOK_READ_TIMEOUT_S = float(RIG_ENV["TTS_HTTP_READ_TIMEOUT"])
SLOW_RECEIVER_S = {"under": WEBHOOK_READ_TIMEOUT_S * 0.4, "over": WEBHOOK_READ_TIMEOUT_S * 2}


@pytest.mark.parametrize("slow", ["under", "over"])
def test_slow_webhook_receiver(slow: str, rig: Rig, report: list[Figures]) -> None:
    # The receiver takes the body at once but answers each job's first delivery only after
    # SLOW_RECEIVER_S (it records the delivery as accepted either way); later ones at once.
    answer_after_s = SLOW_RECEIVER_S[slow]
    seen: set[str] = set()
    lock = threading.Lock()

    def respond(delivery: Delivery) -> int:
        with lock:
            first = delivery.body not in seen
            seen.add(delivery.body)
        if first:
            time.sleep(answer_after_s)
        return 200

    rig.stop_receiver()
    rig.receiver = Receiver(secret=SECRET, port=rig.receiver_port, respond=respond).start()
    rig.start_worker()
    ids = rig.submit(10, "pending=1")
    wait_for(
        lambda: all(
            j is not None and j.notify_state == "delivered" for j in rig.jobs(ids).values()
        ),
        timeout_s=60,
    )
    time.sleep(answer_after_s)  # a slow answer still being given is recorded by then
    tally = rig.tally(ids, timeout_s=0)
    per_job: dict[str, list[Delivery]] = {}
    for d in rig.deliveries():
        per_job.setdefault(d.json()["job_id"], []).append(d)
    jobs = rig.jobs(ids)
    check(
        Figures(
            f"webhook receiver answers after {answer_after_s:g} s "
            f"({slow} the {WEBHOOK_READ_TIMEOUT_S:g} s read timeout)",
            10,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            note=f"{sum(map(len, per_job.values()))} deliveries",
        ),
        report,
    )
    assert sorted(per_job) == sorted(ids)
    # Every delivery of a job is the same signed message: one body, one webhook-id.
    assert all(len({(d.body, d.headers["webhook-id"]) for d in ds}) == 1 for ds in per_job.values())
    assert {j.notify_state for j in jobs.values() if j is not None} == {"delivered"}
    if slow == "under":
        # Answered within the timeout: delivered once, on the first attempt.
        assert {len(ds) for ds in per_job.values()} == {1}
        assert {j.notify_attempts for j in jobs.values() if j is not None} == {1}
    else:
        # Its answer came too late to count: the same message again (a receiver dedupes by
        # webhook-id), delivered on the second attempt.
        assert {len(ds) for ds in per_job.values()} == {2}
        assert {j.notify_attempts for j in jobs.values() if j is not None} == {2}
        notify_errors = {rig.store.redis.hget(rig.store.key(jid), "notify_error") for jid in ids}
        assert notify_errors == {"webhook: ReadTimeout"}


@pytest.mark.timeout(WEBHOOK_OUTAGE_S + 300)
def test_webhook_receiver_down(rig: Rig, report: list[Figures]) -> None:
    rig.start_worker(
        **{
            name: f"{float(RIG_ENV[name]) * WEBHOOK_TIME_SCALE:g}"
            for name in ("TTS_WEBHOOK_RETRY_DELAY", "TTS_WEBHOOK_MAX_RETRY_DELAY")
        }
    )
    rig.respond_status = 503
    ids = rig.submit(20, "pending=1")
    time.sleep(WEBHOOK_OUTAGE_S)
    rig.respond_status = 200
    up_at = time.time()
    tally = rig.tally(ids, timeout_s=120)
    ids_per_job: dict[str, set[str]] = {}
    attempts = 0
    for d in rig.deliveries():
        ids_per_job.setdefault(d.json()["job_id"], set()).add(d.headers["webhook-id"])
        attempts += 1
    check(
        Figures(
            f"webhook receiver down (503) for {WEBHOOK_OUTAGE_S / 60:g} min"
            + (f", retry delays x{WEBHOOK_TIME_SCALE:g}" if WEBHOOK_TIME_SCALE != 1 else ""),
            20,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            tally.last_at - up_at,
            f"{attempts} attempts, one webhook-id per job",
        ),
        report,
    )
    assert all(len(v) == 1 for v in ids_per_job.values())
    assert tally.repeats == 0


def test_same_job_enqueued_ten_times(rig: Rig, report: list[Figures]) -> None:
    rig.start_worker()
    run_id = rig.sim.create_run(Scenario(pending_polls=3), model=MODEL)
    with ThreadPoolExecutor(10) as pool:
        list(
            pool.map(
                lambda _: rig.caller.send_task(
                    "tts.poll_tts",
                    args=[run_id, MODEL],
                    kwargs={"notify_url": rig.notify_url},
                    queue=QUEUES["tts.poll_tts"],
                ),
                range(10),
            )
        )
    tally = rig.tally([run_id], timeout_s=60)
    polls = len(rig.sim.status_polls(run_id))
    check(
        Figures(
            "the same job enqueued 10 times at once",
            1,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            note=f"{polls} status calls (one chain: 4)",
        ),
        report,
    )
    assert polls == 4
    assert tally.repeats == 0


def test_poison_message_is_parked(rig: Rig, report: list[Figures]) -> None:
    worker = rig.start_worker(concurrency=2, TTS_MAX_DELIVERIES="3")
    jid = f"poison-{uuid.uuid4().hex[:8]}"
    run_id = rig.sim.create_run(
        Scenario(pending_polls=0, status_failures=("slow:5",) * 20), model=MODEL
    )
    stop = threading.Event()
    kills = []

    def assassin() -> None:
        """Each time the poison job reaches NanoGPT, its process dies (as a crash would)."""
        seen = 0
        while not stop.is_set():
            polls = len(rig.sim.status_polls(run_id))
            if polls > seen:
                seen = polls
                kills.extend(rig.kill_children(worker))
            time.sleep(0.05)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    rig.caller.send_task(
        "tts.poll_tts",
        args=[run_id, MODEL],
        kwargs={"notify_url": rig.notify_url, "job_id": jid},
        queue=QUEUES["tts.poll_tts"],
    )
    tally = rig.tally([jid], timeout_s=120)
    stop.set()
    thread.join()
    body = tally.bodies.get(jid, {})
    deliveries = len(rig.sim.status_polls(run_id))
    check(
        Figures(
            "a poison message (its task kills the process)",
            1,
            len(tally.lost),
            len(tally.duplicated),
            tally.repeats,
            note=f"parked after {deliveries} deliveries as {body.get('error', {}).get('code')}",
        ),
        report,
    )
    assert body["error"]["code"] == "WORKER_LOST"
    # Parked on its third delivery (TTS_MAX_DELIVERIES=3): at most 3 calls. A delivery that a
    # kill meant for the one before struck first (all pool children die at once) makes none,
    # so a loaded machine can see 2 (seen once under xdist).
    assert 1 <= deliveries <= 3
    # the worker survived its poison and still works
    healthy = rig.submit(1, "pending=0", prefix="after-poison")
    assert not rig.tally(healthy, timeout_s=60).lost
    assert worker.process is not None
    assert worker.process.poll() is None
    os.kill(worker.process.pid, 0)
