"""Argument text for Flower and the logs: short, and without tokens or keys."""

from __future__ import annotations

import ast

import pytest

from tasks import redact


def test_kwargs_repr_drops_query_tokens_and_internals() -> None:
    text = redact.kwargs_repr(
        {
            "notify_url": "https://user:pw@hooks.example.com/tts?token=abc#frag",
            "job_id": "j1",
            "lease": "lease-token",
            "voice": None,
        }
    )
    shown = ast.literal_eval(text)
    assert shown == {"notify_url": "https://hooks.example.com/…", "job_id": "j1"}


def test_keys_that_name_secrets_are_hidden_whatever_their_value() -> None:
    shown = ast.literal_eval(redact.kwargs_repr({"api_key": "sk-1", "webhook_secret": "whsec_x"}))
    assert shown == {"api_key": redact.HIDDEN, "webhook_secret": redact.HIDDEN}


def test_args_repr_cuts_text_and_redacts_urls() -> None:
    long_text = "word " * 100
    shown = ast.literal_eval(
        redact.args_repr([long_text, "Kokoro-82m", "https://cdn.example.com/a.mp3?sig=s3cr3t"])
    )
    assert shown[0] == long_text[: redact.MAX_TEXT_CHARS] + "…"
    assert shown[1] == "Kokoro-82m"
    assert shown[2] == "https://cdn.example.com/…"


def test_any_argument_text_stays_one_table_row() -> None:
    nested = {"a": [list(range(200))]}
    assert len(redact.args_repr([nested])) <= redact.MAX_REPR_CHARS + 1
    assert len(redact.kwargs_repr({"extra": nested})) <= redact.MAX_REPR_CHARS + 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com/…"),
        ("https://discord.com/api/webhooks/123/SECRETTOKEN", "https://discord.com/…"),
        ("https://h.example.com:8443/x?token=SECRET", "https://h.example.com:8443/…"),
        ("https://h.example.com#SECRET", "https://h.example.com/…"),
        ("https://user:SECRET@h.example.com/", "https://h.example.com"),
        ("http://[::1]:8080/SECRET", "http://[::1]:8080/…"),
        ("HTTPS://H.example.com", "https://h.example.com"),
    ],
)
def test_urls_show_scheme_and_host_only(url: str, shown: str) -> None:
    assert redact.redact_url(url) == shown
    assert "SECRET" not in redact.kwargs_repr({"notify_url": url})


@pytest.mark.parametrize(
    "url",
    [
        "https://h.example.com:99999/SECRET",
        "https://h.example.com:abc/SECRET",
        "http://[::1/SECRET",
        "not a url SECRET",
        "",
        12,
        None,
    ],
)
def test_redaction_never_raises_and_never_shows_the_rest(url: object) -> None:
    text = redact.redact_url(url)
    assert "SECRET" not in text
    assert "SECRET" not in redact.kwargs_repr({"notify_url": url, "audio_url": url})
    if isinstance(url, str) and url.startswith("http"):  # other text is shown, cut short
        assert "SECRET" not in redact.args_repr([url])
