"""Plain Celery: an app with no project code, for ``celery -A bench.plain_app worker``.

Rows 2 and 4 drain no-op tasks and no-op chains through a worker of this app, beside the project's
worker, on the same Redis in the same run: Celery's own ceiling, with nothing of ours (task
events, signal handlers, the redacting task class, job records) on the path. It imports nothing
but Celery, so that holds by construction (tests/unit/test_bench_plain_app.py checks it).

Configuration, against the project's (tasks/config/celery_config.py):

* broker: ``CELERY_BROKER_URL``, which Celery itself reads from the environment (the rig sets it to
  the row's Redis, its own database); no result backend (the rig sets ``CELERY_RESULT_BACKEND``
  empty), so results go to Celery's disabled backend, which drops them;
* JSON for tasks and results, JSON only accepted: Celery's defaults, and the project's;
* ``task_acks_late``: the one setting taken from the project rather than Celery's defaults. The
  rows' drain method stops the clock when the queue and the unacknowledged set are both empty;
  with an early ack a chain's next link is published after its predecessor has left that set, so
  "empty" could be seen before the last chains end. An ack costs the same Redis command either
  way, only later;
* everything else is Celery's default: prefetch multiplier 4 (the project's value too), the
  default queue ``celery``, the visibility timeout of an hour (the project's at its default
  settings), no task events (the project sends them), no started state, no signal handlers, no
  custom task class, Celery's own log format.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

NOOP = "plain.noop"
# Celery's default queue: the worker consumes it without -Q and a caller routes there by default.
QUEUE = "celery"

CONFIG: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
}

# Not the process's current app on import: the benchmark process imports this module for its
# names. A worker makes its app current anyway (celery.app.trace.setup_worker_optimizations).
app = Celery("plain", set_as_current=False)
app.config_from_object(CONFIG)


@app.task(name=NOOP)
def noop() -> None:
    """Nothing at all."""
