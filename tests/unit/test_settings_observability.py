"""The metrics and log settings: off by default, validated when set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.config.settings import Settings, env_names, retired_set


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TTS_METRICS_PORT", "TTS_METRICS_HOST", "TTS_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.metrics_port is None
    assert s.metrics_host == "127.0.0.1"
    assert s.log_format == "text"


@pytest.mark.parametrize(("raw", "port"), [("", None), ("0", 0), ("9108", 9108)])
def test_metrics_port(raw: str, port: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_METRICS_PORT", raw)
    assert Settings().metrics_port == port


@pytest.mark.parametrize(
    ("name", "raw"), [("TTS_METRICS_PORT", "70000"), ("TTS_LOG_FORMAT", "xml")]
)
def test_bad_values_are_refused(name: str, raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_a_retired_variable_is_named_with_what_became_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 21: ``TTS_POLL_WAIT`` is no longer read; a worker given it says so (and starts:
    a rolling upgrade with the old configuration must not stop the fleet)."""
    monkeypatch.delenv("TTS_POLL_WAIT", raising=False)
    assert retired_set() == {}
    monkeypatch.setenv("TTS_POLL_WAIT", "broker")
    assert list(retired_set()) == ["TTS_POLL_WAIT"]
    assert "parked in Redis" in retired_set()["TTS_POLL_WAIT"]
    assert "TTS_POLL_WAIT" not in env_names()  # not a setting: nothing reads its value
