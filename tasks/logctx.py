"""Job id and task id on every log line written while a task runs.

The worker sets the task id when a task starts (``task_prerun``) and clears both ids when it ends
(``task_postrun``); the task body binds the job id as soon as it knows it (a submit may make one
up). Context variables, not thread-locals, so the ids stay right under any pool. A log record
factory copies them onto every record, so any handler and format can use ``%(job_id)s``,
``%(task_id)s`` or ``%(log_context)s`` without a filter that some handler might lack.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

_task_id: ContextVar[str | None] = ContextVar("tts_task_id", default=None)
_task_name: ContextVar[str | None] = ContextVar("tts_task_name", default=None)
_job_id: ContextVar[str | None] = ContextVar("tts_job_id", default=None)

# The worker's text format: Celery's default with the ids between the prefix and the message.
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s]%(log_context)s %(message)s"


def start_task(task_id: str | None, task_name: str | None) -> None:
    """A task begins: its id goes on every line until :func:`clear`."""
    _task_id.set(task_id)
    _task_name.set(task_name)
    _job_id.set(None)


def bind_job(job_id: str) -> None:
    """The running task works on ``job_id``."""
    _job_id.set(job_id)


def clear() -> None:
    """The task ended: lines from here on belong to no job."""
    start_task(None, None)


def install_record_factory() -> None:
    """Put ``job_id``, ``task_id``, ``task_name`` and ``log_context`` on every log record."""
    base = logging.getLogRecordFactory()
    if getattr(base, "_tts_context", False):
        return  # already installed in this process

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        job_id, task_id = _job_id.get(), _task_id.get()
        record.job_id = job_id
        record.task_id = task_id
        record.task_name = _task_name.get()
        record.log_context = f" [job={job_id or '-'} task={task_id}]" if task_id else ""
        return record

    factory._tts_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message and the ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "task_id": getattr(record, "task_id", None),
            "task_name": getattr(record, "task_name", None),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
