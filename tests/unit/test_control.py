"""The inspect commands Flower calls answer with redacted argument text."""

from __future__ import annotations

from typing import Any

from celery.worker.control import Panel

from workers import control

TOKEN = "tok-51ab"
INFO = {
    "id": "t1",
    "name": "tts.poll_tts",
    "args": ["run-1", "Kokoro-82m"],
    "kwargs": {"notify_url": f"https://h.example.com/x?token={TOKEN}", "lease": "L", "seq": 2},
}


def test_register_wraps_the_three_commands_once_and_keeps_aliases() -> None:
    control.register()
    first = {name: Panel.data[name] for name in control.COMMANDS}
    control.register()
    for name in control.COMMANDS:
        assert Panel.data[name] is first[name]
        assert getattr(Panel.data[name], control._MARK)
    assert Panel.data["dump_schedule"] is Panel.data["scheduled"]
    assert Panel.data["dump_reserved"] is Panel.data["reserved"]


def test_wrapped_replies_carry_no_token_or_lease() -> None:
    def scheduled(state: Any, **_: Any) -> list[dict[str, Any]]:
        return [{"eta": "2030-01-01T00:00:00", "priority": 0, "request": dict(INFO)}]

    def reserved(state: Any, **_: Any) -> list[dict[str, Any]]:
        return [dict(INFO)]

    for original in (scheduled, reserved):
        reply = control._wrap(original)(object())
        assert TOKEN not in str(reply)
        assert "'lease'" not in str(reply)
        assert "https://h.example.com/…" in str(reply)
    entry = control._wrap(scheduled)(object())[0]
    assert entry["eta"] == "2030-01-01T00:00:00"
    assert entry["request"]["id"] == "t1"


def test_text_that_is_already_a_repr_is_left_alone() -> None:
    info = {**INFO, "args": "['run-1']", "kwargs": "{'seq': 2}"}
    assert control.redact_info(info) == info
