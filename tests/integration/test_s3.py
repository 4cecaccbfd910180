"""Audio that outlives one machine: real workers store into S3 (moto's server on loopback).

Two worker processes stand for two hosts: "host-a" submits and polls, "host-b" downloads,
uploads and notifies. Each has its own TTS_AUDIO_DIR, which must stay empty; they share only the
broker, Redis and the bucket. The webhook's presigned ``url`` is fetched here with plain
``requests``, as the caller's web app would, never through a worker.

They use their own Redis database, so the module-wide local-disk worker of the other integration
tests never takes their messages.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from tasks import names
from tasks.record.jobs import JobStore
from tests.integration.conftest import ELEVEN, Responder, wait_until
from tests.support import redis_dump
from tests.support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoS3
from tests.support.stack import Lane, Spawn
from tests.support.worker import WorkerProcess
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

# A database of the shared test Redis that no other module uses.
PREFIX = "tts/audio/"
# Large enough for a multipart upload (8 MiB parts) of the "large" simulator audio.
MAX_AUDIO_BYTES = 12_000_000
# Where NanoGPT's submit endpoint sits on the simulator.
SUBMIT_PATH = "/api/tts"
# How long S3 stays down after the paid POST reached NanoGPT: "a few seconds", several store
# attempts from the spool.
S3_OUTAGE_S = 4.0
# How long to watch after the webhook for a second POST or webhook: the outage test's worker
# scans for lost steps every second with a 2 s grace, so it would have re-sent any step it still
# thought lost several times over.
WATCH_S = 10.0


@pytest.fixture(scope="module")
def broker_url(lanes: Callable[[], Lane]) -> str:
    return lanes().url


@pytest.fixture(scope="module")
def bucket(s3_server: MotoS3) -> str:
    return s3_server.new_bucket()


@pytest.fixture(scope="module")
def host_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {host: tmp_path_factory.mktemp(f"audio-{host}") for host in ("host-a", "host-b")}


@pytest.fixture(scope="module")
def hosts(
    worker_env: dict[str, str],
    broker_url: str,
    s3_server: MotoS3,
    bucket: str,
    host_dirs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    receiver: Receiver,
) -> Iterator[dict[str, WorkerProcess]]:
    queues = {
        "host-a": f"{names.SUBMIT_QUEUE},{names.POLL_QUEUE}",
        "host-b": f"{names.DOWNLOAD_QUEUE},{names.NOTIFY_QUEUE}",
    }
    logs = tmp_path_factory.mktemp("s3-logs")
    started: dict[str, WorkerProcess] = {}
    try:
        for host, dest in host_dirs.items():
            env = {
                **worker_env,
                **s3_server.env(bucket, PREFIX),
                "CELERY_BROKER_URL": broker_url,
                "TTS_AUDIO_DIR": str(dest),
                "TTS_MAX_AUDIO_BYTES": str(MAX_AUDIO_BYTES),
                # Room for 12 MB through the simulator and into the bucket on a busy machine.
                "TTS_DOWNLOAD_TIMEOUT": "30",
                "TTS_HTTP_READ_TIMEOUT": "10",
            }
            proc = WorkerProcess(
                env,
                logs / f"{host}.log",
                concurrency=2,
                queues=queues[host],
                name=f"tts-{uuid.uuid4().hex[:6]}@{host}",
            )
            started[host] = proc.start()
        yield started
    finally:
        for proc in started.values():
            proc.stop()


@pytest.fixture(scope="module")
def caller(broker_url: str) -> Iterator[Celery]:
    app = Celery("s3-caller", broker=broker_url)
    app.conf.task_serializer = "json"
    yield app
    app.close()


@pytest.fixture(scope="module")
def jobs(broker_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(broker_url, decode_responses=True), ttl_s=600)


@pytest.fixture
def submit(caller: Celery, hosts: dict[str, WorkerProcess], receiver: Receiver) -> Any:
    def _submit(text: str, *, model: str = ELEVEN, notify_url: str | None = None) -> str:
        jid = f"s3-{uuid.uuid4().hex}"
        caller.send_task(
            names.SUBMIT_TTS,
            args=[text, model],
            kwargs={"notify_url": notify_url or receiver.url, "job_id": jid},
            queue=names.SUBMIT_QUEUE,
        )
        return jid

    return _submit


def objects(s3: MotoS3, bucket: str) -> dict[str, int]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])
    return {o["Key"]: o["Size"] for o in listed}


def open_uploads(s3: MotoS3, bucket: str) -> list[Any]:
    return list(s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def test_job_across_two_hosts_ends_in_one_object_and_a_working_url(
    submit: Any,
    receiver: Receiver,
    simulator: Simulator,
    jobs: JobStore,
    s3_server: MotoS3,
    bucket: str,
    hosts: dict[str, WorkerProcess],
    host_dirs: dict[str, Path],
) -> None:
    before = objects(s3_server, bucket)
    jid = submit("Stored far away [[sim pending=2 queue=1]]")
    delivery = receiver.wait_for(jid)
    assert delivery.verified is True
    body = delivery.json()
    assert body["type"] == "tts.completed", body
    audio = body["audio"]
    assert set(audio) == {"bucket", "key", "url", "content_type", "bytes", "sha256"}
    assert audio["bucket"] == bucket
    assert audio["key"].startswith(PREFIX)
    assert jid not in audio["key"]  # derived from a hash of the job id, never the raw id

    # The caller's web app, on yet another machine: plain HTTP to the presigned URL.
    fetched = requests.get(audio["url"], timeout=10)
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == audio["sha256"]
    assert fetched.content == simulator.audio_bytes(body["run_id"])
    assert len(fetched.content) == audio["bytes"]
    assert fetched.headers["Content-Type"] == audio["content_type"] == "audio/wav"

    after = objects(s3_server, bucket)
    assert after[audio["key"]] == audio["bytes"]
    assert set(after) - set(before) == {audio["key"]}  # one job, one object
    assert open_uploads(s3_server, bucket) == []
    assert all(files_in(d) == [] for d in host_dirs.values())  # nothing on either host's disk

    # Each host did its own half of the job.
    assert f"{names.POLL_TTS}[" in hosts["host-a"].log
    assert f"{names.DOWNLOAD_AUDIO}[" not in hosts["host-a"].log
    assert f"{names.DOWNLOAD_AUDIO}[" in hosts["host-b"].log
    assert f"{names.POLL_TTS}[" not in hosts["host-b"].log

    job = wait_until(lambda: (j := jobs.get(jid)) and j.notify_state == "delivered" and j)
    assert job.outcome["audio"]["key"] == audio["key"]
    assert job.outcome["audio"]["sha256"] == audio["sha256"]


def test_duplicate_download_writes_one_object(
    caller: Celery,
    submit: Any,
    receiver: Receiver,
    simulator: Simulator,
    jobs: JobStore,
    s3_server: MotoS3,
    bucket: str,
) -> None:
    """A second delivery of the download step while the first still streams (as after a lost
    ack): both fetch and upload, and the bucket still holds one object with the right bytes.
    """
    before = objects(s3_server, bucket)
    jid = submit("Twice [[sim pending=0 audio=drip:0.01]]")  # ~2 s of dripping audio
    wait_until(lambda: (j := jobs.get(jid)) and j.status == "downloading")
    caller.send_task(names.DOWNLOAD_AUDIO, args=[jid], queue=names.DOWNLOAD_QUEUE)
    body = receiver.wait_for(jid).json()
    audio = body["audio"]
    wait_until(lambda: (j := jobs.get(jid)) and j.notify_state == "delivered")
    audio_gets = [r for r in simulator.requests if r.path == f"/audio/{body['run_id']}.wav"]
    assert len(audio_gets) == 2  # both deliveries really downloaded and uploaded
    assert set(objects(s3_server, bucket)) - set(before) == {audio["key"]}
    fetched = requests.get(audio["url"], timeout=10)
    assert fetched.content == simulator.audio_bytes(body["run_id"])
    assert hashlib.sha256(fetched.content).hexdigest() == audio["sha256"]
    assert len(receiver.for_job(jid)) == 1
    assert open_uploads(s3_server, bucket) == []


def test_inline_audio_goes_to_the_bucket_too(
    submit: Any, receiver: Receiver, s3_server: MotoS3, bucket: str, host_dirs: dict[str, Path]
) -> None:
    """A submit answered with audio bytes is stored by the submitting host (host-a)."""
    jid = submit("Right away [[sim mode=sync_bytes]]", model="tts-1")
    audio = receiver.wait_for(jid).json()["audio"]
    fetched = requests.get(audio["url"], timeout=10)
    assert fetched.content[:4] == b"RIFF"
    assert hashlib.sha256(fetched.content).hexdigest() == audio["sha256"]
    assert audio["key"] in objects(s3_server, bucket)
    assert all(files_in(d) == [] for d in host_dirs.values())


@pytest.fixture
def own_s3() -> Iterator[MotoS3]:
    """An S3 server of one test's own, which it may take down; stopped at the end."""
    server = MotoS3().start()
    yield server
    server.stop()


def test_inline_audio_s3_outage_never_reposts(
    lanes: Callable[[], Lane],
    spawn: Spawn,
    own_s3: MotoS3,
    receiver: Receiver,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    """Sent by name with no job id, a tts-1 style submit answers 200 with the audio while S3 is
    down. The bytes wait in the Redis spool and are stored once S3 is back: one paid POST, one
    webhook under the task id, one object.
    """
    bucket = own_s3.new_bucket()
    lane = lanes()  # a broker database of its own: no other worker takes these messages
    audio_dir = tmp_path / "audio"  # stays empty: the audio goes to the bucket
    audio_dir.mkdir()
    env = lane.env(
        **own_s3.env(bucket, PREFIX),
        TTS_AUDIO_DIR=str(audio_dir),
        # The spooled audio's store is retried with the API's budget: enough to outlast the
        # outage (each attempt also takes up to ~3 s of botocore's own retries).
        TTS_MAX_RETRIES="10",
        TTS_RETRY_BASE_DELAY="0.5",
        TTS_RETRY_MAX_DELAY="1",
        # The spool keeps the audio for the poll timeout: far longer than the outage.
        TTS_POLL_TIMEOUT="60",
        TTS_RECOVERY_GRACE="2",
        TTS_RECONCILE_INTERVAL="1",
    )
    own_s3.stop()  # down before the worker ever connects: every store attempt is refused
    worker = spawn(env, concurrency=2).start()
    text = f"Kept through an S3 outage {uuid.uuid4().hex} [[sim mode=sync_bytes]]"
    task_id = lane.send(names.SUBMIT_TTS, text, "tts-1", notify_url=receiver.url)

    def posts() -> list[float]:
        return [
            r.at
            for r in simulator.requests
            if r.method == "POST"
            and r.path == SUBMIT_PATH
            and r.body is not None
            and r.body.get("text") == text
        ]

    (posted_at,) = wait_until(posts)
    # The outage is real: the worker's store raised, and the step was retried from the spool.
    job = wait_until(
        lambda: (j := lane.store.get(task_id)) and "storage" in (j.last_error or "") and j,
        # Each refused store takes up to ~3 s of botocore's retries, more on a loaded machine.
        timeout_s=45,
    )
    assert job.outcome is None, job
    assert job.spooled is True, job
    time.sleep(max(0.0, posted_at + S3_OUTAGE_S - time.time()))
    assert lane.store.get(task_id).outcome is None  # still waiting, not given up
    retried = [ln for ln in worker.log.splitlines() if "storage upload" in ln and "; retry " in ln]
    assert len(retried) >= 2, worker.log  # several store attempts refused, not one
    own_s3.start()

    delivery = receiver.wait_for(task_id, timeout_s=30)
    time.sleep(WATCH_S)
    accepted = [d for d in receiver.for_job(task_id) if 200 <= d.answered < 300]
    bodies = [d.json() for d in accepted]
    assert {
        "POSTs": len(posts()),
        "accepted webhooks": len(accepted),
        "their job ids": [b["job_id"] for b in bodies],
        "outcomes": [b["type"] for b in bodies],
    } == {
        "POSTs": 1,
        "accepted webhooks": 1,
        "their job ids": [task_id],
        "outcomes": ["tts.completed"],
    }, (bodies, job.last_error)
    assert delivery.verified is True
    audio = bodies[0]["audio"]
    assert audio["bucket"] == bucket
    head = own_s3.client().head_object(Bucket=bucket, Key=audio["key"])
    assert head["ContentLength"] == audio["bytes"] > 0
    fetched = requests.get(audio["url"], timeout=10)
    assert fetched.content[:4] == b"RIFF"
    assert hashlib.sha256(fetched.content).hexdigest() == audio["sha256"]
    assert objects(own_s3, bucket) == {audio["key"]: audio["bytes"]}
    assert files_in(audio_dir) == []


def test_large_audio_goes_up_in_parts(
    submit: Any, receiver: Receiver, simulator: Simulator, s3_server: MotoS3, bucket: str
) -> None:
    size = 9_000_000  # over one 8 MiB part: a multipart upload of two parts
    jid = submit(f"Long read [[sim pending=0 audio=large:{size}]]")
    body = receiver.wait_for(jid, timeout_s=60).json()
    assert body["type"] == "tts.completed", body
    audio = body["audio"]
    assert audio["bytes"] == size
    head = s3_server.client().head_object(Bucket=bucket, Key=audio["key"])
    assert head["ETag"].strip('"').endswith("-2")
    fetched = requests.get(audio["url"], timeout=30)
    assert fetched.content == simulator.audio_bytes(body["run_id"])
    assert hashlib.sha256(fetched.content).hexdigest() == audio["sha256"]
    assert open_uploads(s3_server, bucket) == []


def test_refused_audio_leaves_nothing_in_the_bucket(
    submit: Any, receiver: Receiver, s3_server: MotoS3, bucket: str
) -> None:
    before = objects(s3_server, bucket)
    jid = submit(f"Too big [[sim pending=0 audio=large:{MAX_AUDIO_BYTES + 1}]]")
    body = receiver.wait_for(jid).json()
    assert body["error"]["code"] == "AUDIO_TOO_LARGE"
    assert objects(s3_server, bucket) == before
    assert open_uploads(s3_server, bucket) == []


def test_retried_webhook_still_carries_a_working_url(
    submit: Any, receiver: Receiver, responder: Responder, jobs: JobStore
) -> None:
    """The first attempt is refused; the URL of the retry (signed at its send time) works."""
    token = uuid.uuid4().hex
    responder.plans[f"/hook/{token}"] = [503]
    jid = submit("Try again [[sim pending=0]]", notify_url=f"{receiver.url}/{token}")
    wait_until(lambda: (j := jobs.get(jid)) and j.notify_state == "delivered")
    attempts = receiver.for_job(jid)
    assert [d.answered for d in attempts] == [503, 200]
    last = attempts[-1].json()["audio"]
    assert requests.get(last["url"], timeout=10).status_code == 200


def test_no_aws_secret_in_redis_logs_or_webhooks(
    submit: Any,
    receiver: Receiver,
    broker_url: str,
    hosts: dict[str, WorkerProcess],
) -> None:
    jid = submit("Keep the keys [[sim pending=1]]")
    delivery = receiver.wait_for(jid)
    everything = (
        redis_dump.dump(broker_url)
        + "".join(p.log for p in hosts.values())
        + delivery.body.decode()
    )
    assert jid in everything  # the scan did see the job
    assert SECRET_ACCESS_KEY not in everything
    # The key id appears only where SigV4 puts it: inside a presigned URL's credential scope.
    outside_urls = everything.replace(f"X-Amz-Credential={ACCESS_KEY_ID}", "")
    assert ACCESS_KEY_ID not in outside_urls


def test_cleanup_leaves_the_bucket_to_its_lifecycle_rule(
    caller: Celery,
    submit: Any,
    receiver: Receiver,
    hosts: dict[str, WorkerProcess],
    s3_server: MotoS3,
    bucket: str,
) -> None:
    receiver.wait_for(submit("Keep me [[sim pending=0]]"))
    before = objects(s3_server, bucket)
    sent = caller.send_task(names.CLEANUP_AUDIO, queue=names.QUEUES[names.CLEANUP_AUDIO])
    wait_until(lambda: f"{names.CLEANUP_AUDIO}[{sent.id}] succeeded" in hosts["host-b"].log)
    assert "clean-up skipped: s3 storage" in hosts["host-b"].log
    assert before
    assert objects(s3_server, bucket) == before
