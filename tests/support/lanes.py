"""How ``make test`` deals the suite to its pytest-xdist processes (``-n``), longest first.

pytest-xdist's ``--dist loadgroup`` would read ``xdist_group`` marks, but it carries the group
in a suffix to the node id that pytest 9.2 no longer reads (node ids are built from ``_id``), so
with pytest 9.2 and xdist 3.8 every test went wherever a process was free and the fault rows
ran four at a time. The groups are drawn here instead, in the controller, from the node ids:

* the fault rows (tests/reliability/) in :data:`RELIABILITY_LANES` lanes, dealt in turn in the
  run order (tests/conftest.py puts the longest first): one row at a time in each lane, since
  each times 100-200 jobs through a worker of 8 processes on the cores it shares;
* tests/unit, tests/deploy and tests/sim one by one: what they share is cheap to set up again;
* every other file as a whole, in one process: its tests share module fixtures (a worker, a
  vhost, a venv) and the session worker's queues.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

RELIABILITY = "tests/reliability/"
RELIABILITY_LANES = 2
ONE_BY_ONE = ("tests/unit/", "tests/deploy/", "tests/sim/")


class LaneScheduling(LoadScopeScheduling):
    """LoadScope scheduling with the scopes above; units go out in collection order."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._lanes: dict[str, str] = {}

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.startswith(RELIABILITY):
            # First seen in collection order (schedule() walks it), so the lanes alternate.
            lane = self._lanes.setdefault(
                nodeid, f"reliability-lane-{len(self._lanes) % RELIABILITY_LANES}"
            )
            return lane
        if nodeid.startswith(ONE_BY_ONE):
            return nodeid
        return nodeid.split("::", 1)[0]
