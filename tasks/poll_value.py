"""Which waiting polls get the budget's next tokens: the ones most likely to find audio.

Pure: the releaser (``tasks/parking.py``) passes what the job records say and the generation
times polls have seen; nothing here reads Redis or a clock.

A job's chance of having finished since it was last seen is
``(F(e_now) - F(e_seen)) / (1 - F(e_seen))``, where ``e`` is the time since its generation
started and ``F`` the distribution of generation times. The start is estimated from the queue:
a job seen at position ``p`` starts about ``p`` places times the queue's measured speed later; a job
first seen at the head started between its last queued answer and that one
(:func:`generation_start`). ``F`` is learned from the generation times of jobs that completed
(:class:`Generations`); until enough are known, an exponential prior stands in. Ties, and the
jobs with no chance yet (queued far back), go oldest first; a small staleness term keeps a job
whose estimate is wrong from waiting for ever.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tasks import schedule

# Below this many samples the learned distribution is noise; the prior is used instead.
MIN_SAMPLES = 10
# The prior's mean generation time: ElevenLabs-family jobs take seconds to a minute.
PRIOR_GENERATION_S = 20.0
# A job not seen for this long gets STALE_VALUE added: enough to beat jobs with no chance, never
# enough to beat one likely to be done.
STALE_S = 600.0
STALE_VALUE = 0.05


@dataclass(frozen=True)
class Candidate:
    """A parked poll as its job record describes it (times in epoch seconds)."""

    job_id: str
    seen_at: float | None  # the last status answer (or the acceptance), None: never
    queue_position: int | None  # in that answer; 0 or None: at the head
    first_position: int | None = None
    first_seen_at: float | None = None
    gen_start_at: float | None = None  # estimated when it was first seen at the head
    deadline_at: float | None = None  # the oldest job has the earliest deadline


class Generations:
    """The distribution of generation times, from recent samples (seconds)."""

    def __init__(self, samples: Sequence[float]) -> None:
        self._sorted = sorted(s for s in samples if math.isfinite(s) and s >= 0)

    def cdf(self, elapsed_s: float) -> float:
        """P(a generation takes at most ``elapsed_s``)."""
        if elapsed_s <= 0:
            return 0.0
        n = len(self._sorted)
        if n < MIN_SAMPLES:
            return 1.0 - math.exp(-elapsed_s / PRIOR_GENERATION_S)
        return bisect.bisect_right(self._sorted, elapsed_s) / n

    def survival(self, elapsed_s: float) -> float:
        """P(a generation takes longer than ``elapsed_s``): ``1 - cdf``, the prior's computed
        directly so that its long tail keeps its precision."""
        if elapsed_s <= 0:
            return 1.0
        if len(self._sorted) < MIN_SAMPLES:
            return math.exp(-elapsed_s / PRIOR_GENERATION_S)
        return 1.0 - self.cdf(elapsed_s)

    def floor(self) -> float:
        """The least a remaining share may be: with learned times, a job older than every
        sample is still valued as if one more sample were beyond it. The prior's tail never
        ends: it needs no floor beyond not dividing by zero (1/(n+1) there would make the
        chance unconditional, and a job the longer at the head the less worth a look)."""
        n = len(self._sorted)
        if n < MIN_SAMPLES:
            return sys.float_info.min
        return 1.0 / (n + 1)


def generation_start(c: Candidate, now: float) -> float | None:
    """When the job's generation started (or will): None if it was never seen."""
    if c.seen_at is None:
        return None
    if c.queue_position:
        since_first_s = c.seen_at - c.first_seen_at if c.first_seen_at is not None else 0.0
        progress = schedule.Progress(c.queue_position, c.first_position, since_first_s)
        return c.seen_at + c.queue_position * progress.seconds_per_place()
    return c.gen_start_at if c.gen_start_at is not None else c.seen_at


def done_chance(c: Candidate, now: float, gens: Generations) -> float:
    """The chance the job finished since it was last seen, plus the staleness term."""
    start = generation_start(c, now)
    stale = 0.0 if c.seen_at is None else STALE_VALUE * min(1.0, (now - c.seen_at) / STALE_S)
    if start is None:
        return 0.5  # never seen: as likely as not, worth a look
    assert c.seen_at is not None
    seen_left = gens.survival(c.seen_at - start)
    now_left = gens.survival(now - start)
    return max(0.0, seen_left - now_left) / max(seen_left, gens.floor()) + stale


def rank(candidates: Sequence[Candidate], now: float, gens: Generations) -> list[Candidate]:
    """The candidates, the most likely to have finished first; then the oldest."""

    def key(c: Candidate) -> tuple[float, float]:
        oldest = c.deadline_at if c.deadline_at is not None else math.inf
        return (-done_chance(c, now, gens), oldest)

    return sorted(candidates, key=key)


def share(
    tokens: int, polls: int, submits: int, *, submit_share: float, draw: float
) -> tuple[int, int]:
    """Split ``tokens`` between waiting polls and submits: submits get ``submit_share`` of
    them on average (the fraction of a token rounded up or down by ``draw``, uniform in
    [0, 1), so a releaser that sees one token at a time still shares fairly), and what one kind
    leaves goes to the other. Returns (polls, submits)."""
    to_submits = min(submits, math.floor(tokens * submit_share + draw))
    to_polls = min(polls, tokens - to_submits)
    to_submits = min(submits, tokens - to_polls)
    return to_polls, to_submits
