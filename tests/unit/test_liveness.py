"""The liveness bootstep touches its file on the consumer's timer and removes it at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.config.settings import get_settings
from workers import liveness


class FakeTimer:
    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []
        self.cancelled: list[object] = []

    def call_repeatedly(self, interval_s: float, fun: Callable[..., Any], args: tuple[Any, ...]):
        self.calls.append((interval_s, fun, args))
        return "tref"

    def cancel(self, tref: object) -> None:
        self.cancelled.append(tref)


class FakeConsumer:
    def __init__(self) -> None:
        self.timer = FakeTimer()
        self.steps: list[Any] = []


@pytest.fixture
def alive_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "run" / "alive"
    monkeypatch.setenv("TTS_LIVENESS_FILE", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_touches_at_start_then_on_the_timer_and_removes_at_shutdown(alive_file: Path) -> None:
    consumer = FakeConsumer()
    step = liveness.LivenessFile(consumer)
    step.start(consumer)
    assert alive_file.exists()
    [(interval_s, fun, args)] = consumer.timer.calls
    assert interval_s == liveness.TOUCH_INTERVAL_S

    alive_file.unlink()
    fun(*args)  # what the timer does every interval
    assert alive_file.exists()

    step.shutdown(consumer)
    assert consumer.timer.cancelled == ["tref"]
    assert not alive_file.exists()


def test_without_a_path_nothing_is_scheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_LIVENESS_FILE", "")
    get_settings.cache_clear()
    try:
        consumer = FakeConsumer()
        step = liveness.LivenessFile(consumer)
        step.start(consumer)
        step.shutdown(consumer)
        assert consumer.timer.calls == []
    finally:
        get_settings.cache_clear()
