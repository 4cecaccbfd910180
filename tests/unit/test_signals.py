"""The worker's task-received event carries our redacted text, not the caller's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support.ctx import settings
from workers.signals import ConfigurationError, check_base_url, redact_received


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


@pytest.mark.parametrize(
    ("base_url", "trusted"),
    [
        ("https://nano-gpt.com/api", ""),
        ("https://nano-gpt.com/api", "127.0.0.1"),
        ("http://127.0.0.1:8080/api", "127.0.0.1"),
        ("http://NanoProxy.internal/api", "nanoproxy.internal"),
    ],
)
def test_base_url_https_or_a_trusted_host_starts(base_url: str, trusted: str) -> None:
    check_base_url(settings(NANOGPT_BASE_URL=base_url, TTS_TRUSTED_HOSTS=trusted))


@pytest.mark.parametrize(
    ("base_url", "trusted"),
    [
        ("http://nano-gpt.com/api", ""),
        ("http://nano-gpt.com/api", "127.0.0.1"),
        ("http://127.0.0.1:8080/api", ""),
        ("ftp://127.0.0.1/api", "127.0.0.1"),
        ("nano-gpt.com/api", ""),
        ("http://127.0.0.1:99999/api", ""),
        ("https:///api", ""),
    ],
)
def test_base_url_in_clear_to_an_untrusted_host_refuses_to_start(
    base_url: str, trusted: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_base_url(settings(NANOGPT_BASE_URL=base_url, TTS_TRUSTED_HOSTS=trusted))
    assert "NANOGPT_BASE_URL" in str(caught.value)
    assert "TTS_TRUSTED_HOSTS" in str(caught.value)
