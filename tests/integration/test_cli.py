"""The ``tts-worker`` commands against a real Redis, a real worker and the simulator.

Enqueueing commands run in process (CliRunner) with only ``CELERY_BROKER_URL`` set: no
``NANOGPT_API_KEY``, which only workers need. ``--wait`` and ``simulate`` run as real processes,
as a user would run them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import redis
import requests

from tasks import names
from tasks.record.jobs import WAIT_KEY, JobStore, submit_score
from tests.integration.conftest import ELEVEN, Send, wait_until
from tests.support.cli import TTS_WORKER, assert_one_line, invoke, process_env
from workers.embedded_redis import EmbeddedRedis, free_port
from workers.receiver import Receiver
from workers.simulator import Scenario, Simulator
from workers.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(redis_server: EmbeddedRedis, worker: WorkerProcess) -> dict[str, str]:
    """The CLI's whole environment: where the broker is (a worker consumes it)."""
    return {"CELERY_BROKER_URL": redis_server.url}


def completed(store: JobStore, job_id: str) -> bool:
    job = store.get(job_id)
    return job is not None and job.status == "completed" and job.notify_state != "queued"


def test_speak_prints_the_job_id_and_the_worker_runs_it(
    broker: dict[str, str], store: JobStore, receiver: Receiver
) -> None:
    args = ["speak", "Hello [[sim pending=1]]", "--model", ELEVEN, "--voice", "Rachel"]
    result = invoke([*args, "--notify-url", receiver.url], broker)

    assert result.exit_code == 0, result.output
    job_id = assert_one_line(result.stdout)
    uuid.UUID(job_id)
    wait_until(lambda: completed(store, job_id))
    delivery = receiver.wait_for(job_id)
    assert delivery.verified is True
    assert delivery.json()["audio"]["path"] == store.get(job_id).outcome["audio"]["path"]  # type: ignore[union-attr]


def test_speak_json(broker: dict[str, str], store: JobStore) -> None:
    job_id = f"cli-{uuid.uuid4().hex}"
    args = ["speak", "Hi [[sim pending=0]]", "-m", ELEVEN, "--job-id", job_id, "--json"]
    result = invoke(args, broker)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document.pop("task_id")
    assert document == {"job_id": job_id, "task": names.SUBMIT_TTS, "queue": "tts.submit"}
    wait_until(lambda: completed(store, job_id))


def test_poll_follows_a_run_submitted_elsewhere(
    broker: dict[str, str], store: JobStore, simulator: Simulator
) -> None:
    run_id = simulator.create_run(Scenario(pending_polls=1, cost=0.07), model=ELEVEN)
    args = ["poll", run_id, "-m", ELEVEN, "--cost", "0.07", "--payment-source", "XNO", "--json"]
    result = invoke(args, broker)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["job_id"] == run_id  # the task's default: the run id names the job
    assert document["task"] == names.POLL_TTS
    wait_until(lambda: completed(store, run_id))
    polls = simulator.status_polls(run_id)
    assert len(polls) == 2
    assert polls[0].query["cost"] == "0.07"
    assert polls[0].query["paymentSource"] == "XNO"


def test_status_of_a_finished_job(
    broker: dict[str, str], send: Send, store: JobStore, receiver: Receiver
) -> None:
    job_id = f"cli-{uuid.uuid4().hex}"
    send(
        names.SUBMIT_TTS, "Status [[sim pending=1]]", ELEVEN, job_id=job_id, notify_url=receiver.url
    )
    wait_until(lambda: completed(store, job_id))

    as_json = invoke(["status", job_id, "--json"], broker)
    human = invoke(["status", job_id], broker)

    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["job_id"] == job_id
    assert document["status"] == "completed"
    assert document["polls"] == 2
    assert document["notify_state"] == "delivered"
    assert Path(document["outcome"]["audio"]["path"]).is_file()
    assert not {"token", "seq", "owner"} & document.keys()  # lease internals stay hidden
    assert human.exit_code == 0, human.output
    assert human.stdout.splitlines()[0].split() == ["status", "completed"]
    assert f"audio    {document['outcome']['audio']['path']}" in human.stdout
    assert "delivered" in human.stdout


def test_status_of_an_unknown_job(broker: dict[str, str]) -> None:
    result = invoke(["status", f"nope-{uuid.uuid4().hex}"], broker)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no job nope-" in assert_one_line(result.stderr)


def test_status_without_a_job_shows_the_fleets_budget() -> None:
    with EmbeddedRedis() as redis_server:
        env = {"CELERY_BROKER_URL": redis_server.url, "TTS_UPSTREAM_RATE": "12"}
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        client.zadd(WAIT_KEY, {"a": 1.0, "b": 2.0, "later": 4e9})  # two due, one not yet
        client.zadd(WAIT_KEY, {"c": submit_score(1.0)})
        # Their lanes, as the job records keep them (a and c in the default one).
        client.hset("tts:job:b", mapping={"tenant": "app", "priority": "interactive"})
        as_json = invoke(["status", "--json"], env)
        human = invoke(["status"], env)
        off = invoke(["status"], {**env, "TTS_UPSTREAM_RATE": "0"})

    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {
        "rate_per_s": 12.0,
        "current_rate_per_s": 12.0,
        "burst": 4,
        "tokens_free": 4,
        "polls_due": 2,
        "submits_waiting": 1,
        "lanes": [
            {"priority": "interactive", "tenant": "app", "polls_due": 1, "submits_waiting": 0},
            {"priority": "normal", "tenant": None, "polls_due": 1, "submits_waiting": 1},
        ],
        "lanes_complete": True,
    }
    assert human.exit_code == 0
    assert "12 calls/s, burst 4" in human.stdout
    assert "2 polls due, 1 submits" in human.stdout
    assert "lane     interactive app: 1 polls due, 0 submits" in human.stdout
    assert "lane     normal (no tenant): 1 polls due, 1 submits" in human.stdout
    assert "budget   off" in off.stdout


def test_wait_gives_up_when_no_worker_takes_the_job() -> None:
    with EmbeddedRedis() as idle:  # no worker consumes this one
        args = ["speak", "Hi", "-m", ELEVEN, "--wait", "--timeout", "0.5", "--json"]
        result = invoke(args, {"CELERY_BROKER_URL": idle.url})

    assert result.exit_code == 1
    assert result.stdout == ""
    line = assert_one_line(result.stderr)
    assert "gave up waiting after" in line
    assert "not picked up by any worker" in line


def test_enqueued_message_shows_no_token_and_no_long_text() -> None:
    """Events and Flower show argsrepr/kwargsrepr: redacted like the worker's own messages."""
    url = "http://127.0.0.1:9/hook?token=s3cret"
    with EmbeddedRedis() as idle:  # no worker: the message stays in its queue to be read
        result = invoke(
            ["speak", "x" * 100, "-m", ELEVEN, "--notify-url", url], {"CELERY_BROKER_URL": idle.url}
        )
        raw = redis.Redis.from_url(idle.url).lrange("tts.submit", 0, -1)

    assert result.exit_code == 0, result.output
    headers = json.loads(raw[0])["headers"]
    assert headers["task"] == names.SUBMIT_TTS
    assert "s3cret" not in headers["kwargsrepr"]
    assert "http://127.0.0.1:9/…" in headers["kwargsrepr"]
    assert "x" * 61 not in headers["argsrepr"]
    assert ELEVEN in headers["argsrepr"]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TTS_WORKER, *args],
        env=process_env(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_speak_wait_json_prints_only_the_finished_job(broker: dict[str, str]) -> None:
    done = run_cli(
        ["speak", "Hi [[sim pending=2 queue=1]]", "-m", ELEVEN, "--wait", "--json"], broker
    )

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert document["status"] == "completed"
    assert document["polls"] == 3
    audio = Path(document["outcome"]["audio"]["path"])
    assert audio.stat().st_size == document["outcome"]["audio"]["bytes"]


def test_speak_wait_shows_progress_and_a_failure(broker: dict[str, str]) -> None:
    text = "No [[sim pending=3 queue=5 outcome=content_policy]]"
    done = run_cli(["speak", text, "-m", ELEVEN, "--wait"], broker)

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    uuid.UUID(lines[0])  # the job id first, as without --wait
    # Which states are caught depends on timing; that the job is shown while it polls does not.
    assert any(line.strip().startswith("polling · queue position ") for line in lines)
    assert any(line.strip().startswith("failed · ") for line in lines)
    assert lines[-1].startswith("error    CONTENT_POLICY_VIOLATION: Content rejected")
    assert "Traceback" not in done.stderr


# Ctrl-C stops the simulator at once; far longer means it hangs.
SIGINT_WAIT_S = 10.0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_simulate_serves_until_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [TTS_WORKER, "simulate", "--port", str(port), "--api-key", "k1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        # Ctrl-C as a terminal delivers it: a run started in the background by a
        # non-interactive shell (a CI job) ignores SIGINT, and a child inherits that, so the
        # simulator never saw it (CI hung here for 600 s, then failed).
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        submitted = requests.post(
            f"http://127.0.0.1:{port}/api/tts",
            json={"text": "Hi", "model": ELEVEN},
            headers={"x-api-key": "k1"},
            timeout=5,
        )
        refused = requests.post(
            f"http://127.0.0.1:{port}/api/tts", json={"text": "Hi", "model": ELEVEN}, timeout=5
        )
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=SIGINT_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=SIGINT_WAIT_S)
            pytest.fail(f"simulate still ran {SIGINT_WAIT_S:.0f} s after Ctrl-C; stderr: {err}")
        assert code == 0, proc.communicate(timeout=SIGINT_WAIT_S)[1]
    finally:
        if proc.poll() is None:  # a failed step above: never leave it (or this test) hanging
            proc.kill()
            proc.wait(timeout=SIGINT_WAIT_S)

    assert f"http://127.0.0.1:{port}/api" in banner
    assert submitted.status_code == 202
    assert submitted.json()["status"] == "pending"
    assert refused.status_code == 401


def test_simulate_on_a_busy_port_is_one_line() -> None:
    with Simulator() as taken:
        done = run_cli(["simulate", "--port", str(taken.port)], {})

    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1" in assert_one_line(done.stderr)
