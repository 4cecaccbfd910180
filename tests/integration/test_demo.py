"""``tts-worker demo`` as a user runs it: a real process that starts Redis, a worker, the
simulator and a receiver, and must leave none of them behind, whether it succeeds, fails or is
interrupted.

Every demo process gets a marker variable; its children inherit it, so the test can find any
process the demo left, even after it was re-parented. The Redis server is the exception: it writes
its process title over its environment, so it is found by the port the demo printed instead. It is
a redis-server or a valkey-server (workers/embedded_redis.py, whichever the machine has).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from tasks.config.settings import Settings
from tests.support.cli import TTS_WORKER, assert_one_line, process_env, processes_marked
from workers import demo_redis
from workers.embedded_redis import PATH_NAMES, EmbeddedRedis, free_port
from workers.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

MARK = "TTS_DEMO_TEST_MARK"
# A demo takes seconds; this only stops a hung one from hanging the suite.
DEMO_TIMEOUT_S = 120
# The private server's names (workers/embedded_redis.py), and a pattern matching either.
SERVERS = PATH_NAMES
PRIVATE = "(?:" + "|".join(SERVERS) + ")"


def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def demo_env(tmp_path: Path, mark: str, **extra: str) -> dict[str, str]:
    return process_env({"TTS_AUDIO_DIR": str(tmp_path / "audio"), MARK: mark, **extra})


def left_behind(mark: str, out: str) -> list[str]:
    """Processes the demo started that still run: marked ones, and its redis-server if any."""
    found = processes_marked(MARK, mark)
    broker = re.search(r"^broker   redis://127\.0\.0\.1:(\d+)/0 \(a private", out, re.M)
    if broker:
        found += redis_servers_on(int(broker.group(1)))
    return found


def redis_servers_on(port: int) -> list[str]:
    titles = [f"{name} 127.0.0.1:{port}" for name in SERVERS]
    found = []
    for proc in psutil.process_iter():
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if any(t in cmdline for t in titles) and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(cmdline.strip())
    return found


def run_demo(
    tmp_path: Path, *args: str, prefix: tuple[str, ...] = (), **env: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [*prefix, TTS_WORKER, "demo", *args],
        env=demo_env(tmp_path, mark, **env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=DEMO_TIMEOUT_S,
    )
    return done, mark


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -n` (root or user namespaces)")
def test_demo_with_no_network_at_all(tmp_path: Path) -> None:
    """In a fresh network namespace nothing listens anywhere: the demo brings its own Redis."""
    done, mark = run_demo(tmp_path, prefix=("unshare", "-n"))

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "loopback was down" in out
    assert re.search(rf"\(a private {PRIVATE}, stopped at the end\)", out), out
    assert "NanoGPT  simulator at http://127.0.0.1:" in out
    assert re.search(r"polling · queue position 3 · 1 poll · [\d.]+ s", out)
    assert re.search(r"completed · 5 polls · [\d.]+ s", out)
    assert "[[sim" not in out  # the directive steers the simulator, the user never sees it
    path = Path(re.search(r"^audio    (\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert path.parent == tmp_path / "audio"
    sha256 = re.search(r"^sha256   ([0-9a-f]{64})$", out, re.M).group(1)  # type: ignore[union-attr]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert f"size     {path.stat().st_size:,} bytes (audio/wav)" in out
    assert "webhook  tts.completed, signature verified (webhook-id msg_" in out
    assert "done in" in out.splitlines()[-1]
    assert done.stderr == ""
    assert left_behind(mark, out) == []


def test_demo_interrupted_leaves_nothing_running(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    with subprocess.Popen(
        [TTS_WORKER, "demo", "--embedded-redis"],
        env=demo_env(tmp_path, mark),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    ) as demo:
        assert demo.stdout is not None
        seen = ""
        while "queue position 2" not in seen and demo.poll() is None:
            seen += demo.stdout.readline()
        running = left_behind(mark, seen)
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        out, err = demo.communicate(timeout=60)

    assert any(re.search(PRIVATE, cmd) for cmd in running), running
    assert any("celery -A workers.app worker" in cmd for cmd in running), running
    assert demo.returncode == 130, seen + out + err
    assert "interrupted; everything the demo started is stopped" in assert_one_line(err)
    assert left_behind(mark, seen) == []


def test_demo_failure_is_one_line_and_cleans_up(tmp_path: Path) -> None:
    """With a key set the demo calls "NanoGPT"; here nothing answers there, so the job fails."""
    base_url = f"http://127.0.0.1:{free_port()}/api"  # trusted by the demo: plain http is allowed
    done, mark = run_demo(
        tmp_path,
        "--embedded-redis",
        NANOGPT_API_KEY="not-a-real-key",
        NANOGPT_BASE_URL=base_url,
        TTS_MAX_RETRIES="0",
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"NanoGPT  {base_url} (NANOGPT_API_KEY is set" in done.stdout
    assert "webhook  tts.failed, signature verified" in done.stdout
    line = assert_one_line(done.stderr)
    assert "the job failed with UPSTREAM_ERROR" in line
    log = Path(re.search(r"\(worker log: (\S+)\)$", line).group(1))  # type: ignore[union-attr]
    job_id = re.search(r"^job      (\S+) ", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    assert f"job {job_id} failed: UPSTREAM_ERROR" in log.read_text()
    shutil.rmtree(log.parent)
    assert "not-a-real-key" not in done.stdout + done.stderr
    assert re.search(rf"private {PRIVATE}", done.stdout)
    assert left_behind(mark, done.stdout) == []


def test_demo_refuses_a_broker_other_workers_consume(
    tmp_path: Path, redis_server: EmbeddedRedis, worker: WorkerProcess
) -> None:
    done, mark = run_demo(tmp_path, CELERY_BROKER_URL=redis_server.url)

    assert done.returncode == 1
    line = assert_one_line(done.stderr)
    assert f"workers already consume {redis_server.url}" in line
    assert "unset CELERY_BROKER_URL" in line
    assert left_behind(mark, done.stdout) == []


@pytest.fixture
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as on a machine where CELERY_BROKER_URL is not set."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    return Settings()


def test_demo_uses_a_local_redis_nobody_consumes(unconfigured: Settings) -> None:
    with EmbeddedRedis() as local, ExitStack() as stack:
        notes: list[str] = []
        settings, where = demo_redis.choose(
            stack, unconfigured, embedded=False, note=notes, local_url=local.url
        )

    assert (settings.broker_url, settings.redis_url) == (local.url, local.url)
    assert where == f"{local.url} (found running)"
    assert notes == []


def test_demo_passes_over_a_local_redis_with_workers(
    unconfigured: Settings, redis_server: EmbeddedRedis, worker: WorkerProcess
) -> None:
    with ExitStack() as stack:
        notes: list[str] = []
        settings, where = demo_redis.choose(
            stack, unconfigured, embedded=False, note=notes, local_url=redis_server.url
        )
        private = settings.broker_url
        assert private != redis_server.url
        assert settings.redis_url == private
        assert re.search(rf"a private {PRIVATE}", where)
        assert len(notes) == 1
        assert f"{redis_server.url} has workers of its own (itest-" in notes[0]
        port = int(private.rsplit(":", 1)[1].split("/")[0])
        assert redis_servers_on(port) != []

    assert redis_servers_on(port) == []  # stopped with the stack
