"""Which waiting polls get the budget's next tokens: the ones most likely to find audio.

Pure: the releaser (``tasks/sweeps/granting.py``) passes what the job records say and the generation
times polls have seen; nothing here reads Redis or a clock.

A job's chance of having finished since it was last seen is ``1 - S(e_now) / S(e_seen)``, where
``e`` is the time since its generation started and ``S`` the chance a generation is still
running after that long. The start is estimated from the queue: a job seen at position ``p``
starts about ``p`` places times the queue's measured speed later; a job first seen at the head
started between its last queued answer and that one (:func:`generation_start`). ``S`` is learned
from the generation times of jobs of the same model that completed (:class:`Generations`, kept
by :mod:`tasks.pacing.learning`), with a short tail past
the longest of them; until enough are known, an exponential prior stands in. Ties, and the jobs
with no chance yet (queued far back), go oldest first; a small staleness term keeps a job whose
estimate is wrong from waiting for ever.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tasks.pacing import schedule

# Below this many samples the learned distribution is noise; the prior is used instead.
MIN_SAMPLES = 10
# The prior's mean generation time: ElevenLabs-family jobs take seconds to a minute.
PRIOR_GENERATION_S = 20.0
# Past the longest generation seen, the chance a job still runs falls by e every this many
# seconds: such a job has outlived every recent one and most likely ends any moment.
TAIL_S = 5.0
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
    model: str | None = None  # whose generation times apply


class Generations:
    """The distribution of generation times, from recent samples (seconds), as a survival
    function: the chance a generation is still running after ``e`` seconds."""

    def __init__(self, samples: Sequence[float]) -> None:
        self._sorted = sorted(s for s in samples if math.isfinite(s) and s >= 0)

    @property
    def learned(self) -> bool:
        """Whether there are enough samples (:data:`MIN_SAMPLES`) to trust their shape."""
        return len(self._sorted) >= MIN_SAMPLES

    def share_done(self, elapsed_s: float) -> float:
        """The share of the samples at most ``elapsed_s`` (0 with none)."""
        if not self._sorted:
            return 0.0
        return bisect.bisect_right(self._sorted, elapsed_s) / len(self._sorted)

    def time_of_share(self, share: float) -> float:
        """The shortest sample by which at least ``share`` of the samples had ended (the
        longest for a share of 1 or more). Raises ValueError with no samples."""
        if not self._sorted:
            raise ValueError("no generation times learned")
        n = len(self._sorted)
        return self._sorted[min(n - 1, max(0, math.ceil(share * n - 1e-9) - 1))]

    def survival(self, elapsed_s: float) -> float:
        """P(a generation takes longer than ``elapsed_s``). Within the samples, the empirical
        share longer (counted as if one more sample lay beyond the longest, so it never reaches
        0); past the longest, that last share decays with :data:`TAIL_S`: a job that has run
        longer than every recent one is likely to end any moment, not never."""
        if elapsed_s <= 0:
            return 1.0
        n = len(self._sorted)
        if n < MIN_SAMPLES:
            return math.exp(-elapsed_s / PRIOR_GENERATION_S)
        longer = n - bisect.bisect_right(self._sorted, elapsed_s)
        share = (longer + 1) / (n + 1)
        if longer == 0:
            share *= math.exp(-(elapsed_s - self._sorted[-1]) / TAIL_S)
        return share


def generation_start(c: Candidate, now: float, s_per_place: float | None = None) -> float | None:
    """When the job's generation started (or will): None if it was never seen. A queued job
    starts its places later at ``s_per_place`` (the fleet's learned speed), else at the speed
    its own queue was seen to move."""
    if c.seen_at is None:
        return None
    if c.queue_position:
        if s_per_place is None:
            since_first_s = c.seen_at - c.first_seen_at if c.first_seen_at is not None else 0.0
            progress = schedule.Progress(c.queue_position, c.first_position, since_first_s)
            s_per_place = progress.seconds_per_place()
        return c.seen_at + c.queue_position * s_per_place
    return c.gen_start_at if c.gen_start_at is not None else c.seen_at


def done_chance(c: Candidate, now: float, gens: Generations) -> float:
    """The chance the job finished since it was last seen, plus the staleness term."""
    start = generation_start(c, now)
    if start is None or c.seen_at is None:
        return 0.5  # never seen: as likely as not, worth a look
    stale = STALE_VALUE * min(1.0, (now - c.seen_at) / STALE_S)
    still_then = gens.survival(c.seen_at - start)
    still_now = gens.survival(now - start)
    return max(0.0, 1.0 - still_now / still_then) + stale


def rank(
    candidates: Sequence[Candidate],
    now: float,
    gens: Generations,
    by_model: Mapping[str, Generations] | None = None,
) -> list[Candidate]:
    """The candidates, the most likely to have finished first; then the oldest. A candidate's
    model's generation times (``by_model``) apply to it where known, else ``gens``."""
    models = by_model or {}

    def key(c: Candidate) -> tuple[float, float]:
        oldest = c.deadline_at if c.deadline_at is not None else math.inf
        own = models.get(c.model or "", gens)
        return (-done_chance(c, now, own), oldest)

    return sorted(candidates, key=key)


def share(
    tokens: int, polls: int, submits: int, *, submit_share: float, draw: float
) -> tuple[int, int]:
    """Split ``tokens`` between waiting polls and submits: submits get ``submit_share`` of
    them on average (the fraction of a token rounded up or down by ``draw``, uniform in
    [0, 1), so a releaser that sees one token at a time still shares fairly), and what one kind
    leaves goes to the other. Returns (polls, submits)."""
    # min with tokens: tokens * submit_share + draw rounds up to tokens + 1 for a draw just
    # below 1 (1 + 0.9999999999999999 == 2.0 in binary floating point).
    to_submits = min(submits, tokens, math.floor(tokens * submit_share + draw))
    to_polls = min(polls, tokens - to_submits)
    to_submits = min(submits, tokens - to_polls)
    return to_polls, to_submits
