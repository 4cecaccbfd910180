"""The worker's task-received event carries our redacted text, not the caller's."""

from __future__ import annotations

from types import SimpleNamespace

from workers.signals import redact_received


def test_received_request_text_is_replaced() -> None:
    request = SimpleNamespace(
        args=["t" * 300, "Kokoro-82m"],
        kwargs={"notify_url": "https://h.example.com/cb?token=tok-1", "job_id": "j"},
        _argsrepr="['" + "t" * 300 + "', 'Kokoro-82m']",
        _kwargsrepr="{'notify_url': 'https://h.example.com/cb?token=tok-1', 'job_id': 'j'}",
    )
    redact_received(request=request)
    assert "tok-1" not in request._kwargsrepr
    assert "https://h.example.com/…" in request._kwargsrepr
    assert len(request._argsrepr) < 100
