"""Secrets never reach a log line, even when a library quotes them."""

from __future__ import annotations

import io
import logging

from workers.log_redaction import MASK, install

SECRET = "sk-live-0123456789abcdef"


def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"redaction-test-{id(stream)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    install([SECRET, "short"], [logger])
    return logger, stream


def test_message_and_args_are_masked() -> None:
    logger, stream = capture()
    logger.warning("header x-api-key: %s sent", SECRET)
    logger.warning("plain %s", "short")  # too short to be treated as a secret
    out = stream.getvalue()
    assert SECRET not in out
    assert MASK in out
    assert "plain short" in out


def test_traceback_is_masked() -> None:
    logger, stream = capture()
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        logger.exception("request failed")
    out = stream.getvalue()
    assert SECRET not in out
    assert "ValueError" in out
    assert "request failed" in out


def test_clean_lines_untouched() -> None:
    logger, stream = capture()
    logger.info("nothing %d here", 42)
    logger.setLevel(logging.INFO)
    logger.info("nothing %d here", 42)
    assert stream.getvalue().strip() == "nothing 42 here"


def test_every_kind_of_secret_in_the_settings_is_masked() -> None:
    from tests.support.ctx import settings
    from workers.log_redaction import secrets_of

    whsec_key = "c2VjcmV0LWtleS1mb3ItdGVzdHMtMzItYnl0ZXMhIQ=="
    s = settings(
        NANOGPT_API_KEY="nano-api-key-0001",
        TTS_WEBHOOK_SECRET="whsec_" + whsec_key,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEYID0001",
        AWS_SECRET_ACCESS_KEY="aws-secret-access-key-0001",
        AWS_SESSION_TOKEN="aws-session-token-0001",
        CELERY_BROKER_URL="redis://:broker-pass%2F01@127.0.0.1:6379/0",
        CELERY_RESULT_BACKEND="redis://user:backend-pass-01@127.0.0.1:6379/1",
        TTS_REDIS_URL="redis://127.0.0.1:6379/2?password=store-pass-01",
    )
    stream = io.StringIO()
    logger = logging.getLogger(f"redaction-settings-{id(stream)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    install(secrets_of(s), [logger])
    shown = [
        "nano-api-key-0001",
        whsec_key,
        "AKIAEXAMPLEKEYID0001",
        "aws-secret-access-key-0001",
        "aws-session-token-0001",
        "broker-pass%2F01",
        "broker-pass/01",
        "backend-pass-01",
        "store-pass-01",
    ]
    for secret in shown:
        logger.warning("quoted: %s", secret)
    out = stream.getvalue()
    for secret in shown:
        assert secret not in out
    assert out.count(MASK) == len(shown)
