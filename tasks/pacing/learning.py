"""What the fleet learns about NanoGPT from its own polls, kept in Redis for every worker.

Per model (NanoGPT queues each model's jobs apart), recent samples in capped lists (newest
first), so a change in NanoGPT's speed shows within minutes and a removed deployment leaves
nothing behind (:data:`TTL_S`):

* the queue's speed, seconds per place: each time a poll sees a job's position fall from ``p1``
  to ``p2`` in ``dt`` seconds, ``dt / (p1 - p2)``; of the last :data:`QUEUE_SAMPLES`, the
  median (:meth:`Fleet.s_per_place`) and a fast quantile (:meth:`Fleet.fast_s_per_place`). One
  job measures its own queue only after it moved; the fleet's speed is known before the first
  answer;
* the line's length: recent queued answers (when, which place), so a job just submitted knows
  it is behind what is left of them (:meth:`Fleet.places_ahead`);
* generation times per model: when a completed job finished, counted from its estimated start:
  after the last answer that showed it generating and by the one that said completed
  (:func:`tasks.steps.poll._learn_generation`), the last :data:`GENERATION_SAMPLES` intervals,
  read as times by :func:`tasks.pacing.censoring.impute`.

The keys hang off the job store's prefix, so a deployment (or a test) on its own Redis database
learns only from its own jobs, and :func:`keys` names them for whoever must forget. Learning is a
refinement, never a dependency: a Redis error while reading counts as nothing learned, and a lost
sample is dropped (:class:`Learning` logs it and goes on).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import redis

from tasks.pacing import censoring
from tasks.record.contract import KEY_PREFIX

log = logging.getLogger(__name__)

#: What is learned of one model's queue and generations: this prefix, the model's name, then
#: ``:s-per-place`` (one sample per position change a poll saw), ``:positions`` (``seen_at:p``
#: of recent queued answers) or ``:generation-s``.
PREFIX = KEY_PREFIX.removesuffix("job:") + "learn:"
# A median of this many moves follows a queue that speeds up or slows down within a minute of
# polls, and one odd sample (a poll delayed by a busy worker) cannot move it. As many recent
# queued answers say how long the line is.
QUEUE_SAMPLES = 64
# Enough completions for a distribution with a tail, few enough to follow NanoGPT's speed.
GENERATION_SAMPLES = 256
# Samples outlive idle gaps (a nightly batch learns from the last one); then they go.
TTL_S = 86_400
# A worker reads what the fleet learned at most this often: every poll would otherwise read 384
# numbers; a second-old view moves the aim by nothing measurable.
CACHE_S = 1.0
# Moves measured over less than this are clock noise, not the queue's speed.
MIN_MOVE_S = 0.05
# The fast speed is this quantile of the moves (one in ten was faster), once there are
# MIN_MOVES: a line seen is taken to clear that fast (Fleet.places_ahead), so a new job is not
# taken to be further back than it is.
FAST_SHARE = 0.1
MIN_MOVES = 5


def key(model: str | None, what: str) -> str:
    """The key of ``what`` (``s-per-place``, ``positions``, ``generation-s``) for ``model``."""
    return f"{PREFIX}{model or ''}:{what}"


def keys(client: redis.Redis) -> list[str]:
    """Every learned key in ``client``'s database (for tests and resets to delete); at least
    one name, so ``DEL *keys(...)`` is always a valid command."""
    found = [k.decode() if isinstance(k, bytes) else str(k) for k in client.keys(PREFIX + "*")]
    return found or [PREFIX]


@dataclass(frozen=True)
class Fleet:
    """What the fleet has learned, as one poll sees it."""

    generation_s: tuple[float, ...] = ()  # recent generation times of the job's model
    s_per_place_samples: tuple[float, ...] = ()
    positions: tuple[tuple[float, int], ...] = ()  # (seen_at, position) of recent queued answers

    def s_per_place(self) -> float | None:
        """The queue's seconds per place: the median of the recent moves; None before any."""
        if not self.s_per_place_samples:
            return None
        return statistics.median(self.s_per_place_samples)

    def fast_s_per_place(self) -> float | None:
        """The queue at its fastest plausible: the :data:`FAST_SHARE` quantile of the recent
        moves; None before :data:`MIN_MOVES` of them."""
        moves = sorted(self.s_per_place_samples)
        if len(moves) < MIN_MOVES:
            return None
        return moves[int(FAST_SHARE * (len(moves) - 1))]

    def places_ahead(self, now: float) -> int:
        """At least how many jobs a job submitted at ``now`` has ahead: every job seen queued
        was submitted before it, and the queue is first in, first out, so it is behind what is
        left of each line seen, the line having cleared at the fast speed since. 0 when
        nothing is learned."""
        fast = self.fast_s_per_place()
        if fast is None or fast <= 0:
            return 0
        left = (p - (now - seen_at) / fast for seen_at, p in self.positions)
        return max(0, math.floor(max(left, default=0.0)))


def _floats(raw: list[object]) -> tuple[float, ...]:
    out = []
    for x in raw:
        try:
            value = float(x.decode() if isinstance(x, bytes) else str(x))
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            out.append(value)
    return tuple(out)


def _intervals(raw: list[object]) -> tuple[tuple[float, float], ...]:
    """``after:by`` intervals (a bare number: that exact time), junk skipped."""
    out = []
    for x in raw:
        text = x.decode() if isinstance(x, bytes) else str(x)
        after, _, by = text.rpartition(":")
        try:
            lo, hi = (float(after) if after else float(by)), float(by)
        except ValueError:
            continue
        if math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi:
            out.append((lo, hi))
    return tuple(out)


def _positions(raw: list[object]) -> tuple[tuple[float, int], ...]:
    out = []
    for x in raw:
        text = x.decode() if isinstance(x, bytes) else str(x)
        at, _, position = text.rpartition(":")
        try:
            seen_at, places = float(at), int(position)
        except ValueError:
            continue
        if math.isfinite(seen_at) and places > 0:
            out.append((seen_at, places))
    return tuple(out)


class Learning:
    """The fleet's learned samples in Redis, read through a short per-process cache."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float]) -> None:
        self._redis = client
        self._clock = clock
        self._cache: dict[str, tuple[float, Fleet]] = {}

    def fleet(self, model: str | None) -> Fleet:
        """What is learned for a job of ``model`` (at most :data:`CACHE_S` old)."""
        name = model or ""
        now = self._clock()
        hit = self._cache.get(name)
        if hit is not None and 0 <= now - hit[0] < CACHE_S:
            return hit[1]
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.lrange(key(name, "generation-s"), 0, -1)
                pipe.lrange(key(name, "s-per-place"), 0, -1)
                pipe.lrange(key(name, "positions"), 0, -1)
                gens, moves, positions = pipe.execute()
        except redis.RedisError as exc:
            log.debug("learned samples not read (%s); scheduling without them", exc)
            return Fleet()
        fleet = Fleet(censoring.impute(_intervals(gens)), _floats(moves), _positions(positions))
        self._cache[name] = (now, fleet)
        return fleet

    def record_finished(self, model: str | None, after_s: float, by_s: float) -> None:
        """Keep when one completed job finished, counted from its start: after ``after_s`` (the
        last answer that showed it generating; 0 or less: none did) and by ``by_s`` (equal:
        that exact time)."""
        if math.isfinite(after_s) and math.isfinite(by_s) and by_s > 0 and after_s <= by_s:
            sample = f"{round(max(0.0, after_s), 4)!r}:{round(by_s, 4)!r}"
            self._push(key(model, "generation-s"), sample, GENERATION_SAMPLES)

    def record_move(self, model: str | None, places: int, seconds: float) -> None:
        """A job's queue position fell by ``places`` in ``seconds``: one speed sample."""
        if places > 0 and math.isfinite(seconds) and seconds >= MIN_MOVE_S:
            self._push(key(model, "s-per-place"), repr(round(seconds / places, 4)), QUEUE_SAMPLES)

    def record_position(self, model: str | None, position: int, seen_at: float) -> None:
        """A job was seen ``position`` places from the head at ``seen_at``."""
        if position > 0 and math.isfinite(seen_at):
            self._push(key(model, "positions"), f"{seen_at!r}:{position}", QUEUE_SAMPLES)

    def _push(self, name: str, value: str, cap: int) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(name, value)
                pipe.ltrim(name, 0, cap - 1)
                pipe.expire(name, TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            log.debug("learned sample %s=%r dropped (%s)", name, value, exc)
