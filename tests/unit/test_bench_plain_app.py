"""bench/plain_app.py is plain Celery: none of the project's code, Celery's defaults but one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import plain_app

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: this test process has imported the project long before.
PROBE = """
import json, sys
from bench import plain_app
conf = plain_app.app.conf
print(json.dumps({
    "project_modules": sorted(
        m for m in sys.modules if m.split(".")[0] in ("tasks", "workers") or m == "bench.rig"
    ),
    "tasks": sorted(t for t in plain_app.app.tasks if not t.startswith("celery.")),
    "acks_late": conf.task_acks_late,
    "events": conf.worker_send_task_events,
    "track_started": conf.task_track_started,
    "prefetch": conf.worker_prefetch_multiplier,
    "serializer": conf.task_serializer,
    "accept": list(conf.accept_content),
    "default_queue": conf.task_default_queue,
    "task_cls": str(plain_app.app.task_cls),
}))
"""


def probe() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_plain_app_imports_no_project_code_and_has_only_its_noop() -> None:
    found = probe()
    assert found["project_modules"] == []
    assert found["tasks"] == [plain_app.NOOP]


def test_plain_app_keeps_celerys_defaults_but_acks_late() -> None:
    found = probe()
    assert found["acks_late"] is True  # the drain method needs it (see the module docstring)
    assert found["events"] is False
    assert found["track_started"] is False
    assert found["prefetch"] == 4
    assert found["serializer"] == "json"
    assert found["accept"] == ["json"]
    assert found["default_queue"] == plain_app.QUEUE == "celery"
    assert found["task_cls"] == "celery.app.task:Task"
