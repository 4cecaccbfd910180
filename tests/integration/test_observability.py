"""Metrics scraped over HTTP from a real prefork worker, and job/task ids on its log lines."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks import names
from tests.support.stack import ELEVEN, Lane, Responder, Send, wait_until
from tests.support.worker import WorkerProcess
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def lane(lanes: Callable[[], Lane]) -> Lane:
    return lanes()


@pytest.fixture(scope="module")
def metrics_worker(
    lane: Lane,
    tmp_path_factory: pytest.TempPathFactory,
    simulator: Simulator,
    receiver: Receiver,
) -> Iterator[WorkerProcess]:
    """Two pool processes, each replaced after 4 tasks: the sum must include the dead ones."""
    proc = WorkerProcess(
        lane.env(TTS_METRICS_PORT="0", TTS_LOG_FORMAT="json"),
        tmp_path_factory.mktemp("metrics") / "worker.log",
        concurrency=2,
        extra_argv=("--max-tasks-per-child", "4"),
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def known_jobs(
    lane: Lane, metrics_worker: WorkerProcess, receiver: Receiver, responder: Responder
) -> dict[str, str]:
    """Three completed jobs (one webhook refused once), one content-policy failure, one job
    whose status calls fail twice with 500 before it completes. Returns job id -> kind."""
    flaky_path = f"/hook/metrics-{uuid.uuid4().hex}"
    responder.plans[flaky_path] = [503]
    flaky_hook = receiver.url.replace("/hook", flaky_path)
    jobs = {f"m-{kind}-{uuid.uuid4().hex}": kind for kind in ("ok", "ok", "ok", "policy", "flaky")}
    texts = {
        "ok": "Fine [[sim pending=1]]",
        "policy": "Bad words [[sim pending=1 outcome=content_policy]]",
        "flaky": "Flaky [[sim pending=1 status_fail=500,500]]",
    }
    for n, (jid, kind) in enumerate(jobs.items()):
        url = flaky_hook if n == 0 else receiver.url
        lane.send(names.SUBMIT_TTS, texts[kind], ELEVEN, notify_url=url, job_id=jid)
    for jid in jobs:
        wait_until(lambda jid=jid: (j := lane.store.get(jid)) and j.notify_state == "delivered")
    return jobs


def scrape(worker: WorkerProcess) -> dict[str, float]:
    match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.log)
    assert match, worker.log
    with urllib.request.urlopen(f"http://127.0.0.1:{match[1]}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_exactly_what_happened(
    metrics_worker: WorkerProcess, known_jobs: dict[str, str], lane: Lane
) -> None:
    audio_bytes = 0
    for jid, kind in known_jobs.items():
        job = lane.store.get(jid)
        assert job is not None
        assert job.status == ("failed" if kind == "policy" else "completed")
        if job.status == "completed":
            audio_bytes += job.outcome["audio"]["bytes"]
    expected = {
        # 5 jobs x 1 pending answer; 4 completed; 1 content policy; 2 x 500 on the flaky job
        "tts_polls_total{outcome=pending}": 5.0,
        "tts_polls_total{outcome=completed}": 4.0,
        "tts_polls_total{outcome=failed}": 1.0,
        "tts_polls_total{outcome=retry}": 2.0,
        "tts_poll_lag_seconds_count{}": 12.0,
        "tts_poll_lag_seconds_bucket{le=+Inf}": 12.0,
        "tts_jobs_finished_total{outcome=completed}": 4.0,
        "tts_jobs_finished_total{outcome=CONTENT_POLICY_VIOLATION}": 1.0,
        "tts_download_bytes_total{}": float(audio_bytes),
        "tts_download_seconds_count{}": 4.0,
        "tts_webhook_attempts_total{result=delivered}": 5.0,
        "tts_webhook_attempts_total{result=failed}": 1.0,
    }
    # The last webhook's count lands just before its job says "delivered": wait for it.
    got: dict[str, float] = {}

    def matches() -> bool:
        nonlocal got
        got = scrape(metrics_worker)
        return all(got.get(name) == value for name, value in expected.items())

    try:
        wait_until(matches, timeout_s=10)
    finally:
        assert {name: got.get(name) for name in expected} == expected
    # Only those label values exist: no outcome was counted under another name.
    counted = {n for n in got if n.startswith(("tts_polls_total", "tts_jobs", "tts_webhook"))}
    assert counted == {n for n in expected if n.startswith(("tts_polls", "tts_jobs", "tts_web"))}
    assert got["tts_download_seconds_sum{}"] > 0
    # Pool processes were replaced (--max-tasks-per-child 4): the counts above include them.
    assert len(set(re.findall(r'"process": "(ForkPoolWorker-\d+)"', metrics_worker.log))) > 2


def test_json_log_lines_carry_job_and_task_ids(
    metrics_worker: WorkerProcess, known_jobs: dict[str, str]
) -> None:
    entries = [json.loads(line) for line in metrics_worker.log.splitlines() if line.startswith("{")]
    received = {
        m[2]: m[1]
        for e in entries
        if (m := re.match(rf"Task (tts\.\w+)\[({UUID_RE})\] received", e["message"]))
    }
    for jid, kind in known_jobs.items():
        ours = [e for e in entries if f"job {jid}" in e["message"]]
        assert ours, jid
        for entry in ours:
            assert entry["job_id"] == jid, entry
            assert received.get(entry["task_id"]) == entry["task_name"], entry
        finished = "failed: CONTENT_POLICY_VIOLATION" if kind == "policy" else "completed:"
        assert any(finished in e["message"] for e in ours), ours
    # Lines outside any task carry no ids.
    ready = next(e for e in entries if e["message"].endswith(" ready."))
    assert ready["job_id"] is None
    assert ready["task_id"] is None


def test_text_log_lines_carry_job_and_task_ids(
    send: Send, worker: WorkerProcess, receiver: Receiver
) -> None:
    jid = f"log-{uuid.uuid4().hex}"
    submit_id = send(
        names.SUBMIT_TTS,
        "Logged [[sim pending=1 status_fail=503]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    receiver.wait_for(jid)
    lines = wait_until(
        lambda: (
            [ln for ln in worker.log.splitlines() if f"job {jid}" in ln and "completed" in ln]
            and [ln for ln in worker.log.splitlines() if f"job {jid}" in ln]
        )
    )
    task_of = {
        m[2]: m[1] for m in re.finditer(rf"Task (tts\.\w+)\[({UUID_RE})\] received", worker.log)
    }
    assert task_of[submit_id] == names.SUBMIT_TTS
    steps = set()
    for line in lines:
        match = re.search(rf"\] \[job=(\S+) task=({UUID_RE})\] ", line)
        assert match, line
        assert match[1] == jid
        steps.add(task_of[match[2]])
    # The 503 retry is logged by a poll, the completion by the download.
    assert {names.POLL_TTS, names.DOWNLOAD_AUDIO} <= steps, lines
    assert not [ln for ln in worker.log.splitlines() if " ready." in ln and "[job=" in ln]


def test_metrics_are_off_by_default(worker: WorkerProcess) -> None:
    assert "metrics on http" not in worker.log
