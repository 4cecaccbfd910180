"""The metrics and log settings: off by default, validated when set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.config.settings import Settings


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
