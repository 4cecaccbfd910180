"""What the budget's tests share: a clock that moves only when told, at a realistic epoch time
(a float-precision bug at ~1.8e9 s was found once), and the shared keys they wipe."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.pacing.budget import BUDGET_KEY, GRANTED_KEY
from tasks.record.jobs import DUE_KEY, WAIT_KEY
from tasks.sweeps.granting import LANES_KEY

# A realistic epoch time with a fraction no binary or decimal rounding leaves alone.
EPOCH = 1_800_000_000.123456
# The fleet-wide keys the budget and parking use: tests start from none of them.
SHARED_KEYS = (BUDGET_KEY, WAIT_KEY, DUE_KEY, GRANTED_KEY, LANES_KEY)


@dataclass
class Clock:
    """Epoch seconds that move only when the test says so."""

    now: float = EPOCH

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
