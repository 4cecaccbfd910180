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
