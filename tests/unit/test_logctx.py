"""Job and task ids reach log records from context variables, in text and JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from tasks import logctx


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    saved = logging.getLogRecordFactory()
    logctx.install_record_factory()
    logctx.install_record_factory()  # idempotent: one layer only
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("test.logctx")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logctx.clear()
    logging.setLogRecordFactory(saved)


def test_ids_follow_the_task(records: list[logging.LogRecord]) -> None:
    log = logging.getLogger("test.logctx")
    log.info("before")
    logctx.start_task("task-1", "tts.poll_tts")
    log.info("no job yet")
    logctx.bind_job("job-9")
    log.info("working")
    logctx.clear()
    log.info("after")
    text = logging.Formatter(logctx.TEXT_FORMAT.replace("%(asctime)s", "T"))
    assert [text.format(r) for r in records] == [
        "[T: INFO/MainProcess] before",
        "[T: INFO/MainProcess] [job=- task=task-1] no job yet",
        "[T: INFO/MainProcess] [job=job-9 task=task-1] working",
        "[T: INFO/MainProcess] after",
    ]
    entry = json.loads(logctx.JsonFormatter().format(records[2]))
    assert entry["job_id"] == "job-9"
    assert entry["task_id"] == "task-1"
    assert entry["task_name"] == "tts.poll_tts"
    assert entry["message"] == "working"
    assert json.loads(logctx.JsonFormatter().format(records[3]))["task_id"] is None


def test_json_keeps_tracebacks(records: list[logging.LogRecord]) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("test.logctx").exception("failed")
    entry = json.loads(logctx.JsonFormatter().format(records[0]))
    assert "ValueError: boom" in entry["exc_info"]
