"""What the fleet learns about NanoGPT from its own polls, kept in Redis for every worker.

Two things, both recent samples in capped lists (newest first), so a change in NanoGPT's speed
shows within minutes and a removed deployment leaves nothing behind (:data:`TTL_S`):

* the queue's speed, seconds per place: each time a poll sees a job's position fall from ``p1``
  to ``p2`` in ``dt`` seconds, ``dt / (p1 - p2)``; of the last :data:`QUEUE_SAMPLES`, the
  median (:meth:`Fleet.s_per_place`) and a fast quantile (:meth:`Fleet.fast_s_per_place`). One
  job measures its own queue only after it moved; the fleet's speed is known before the first
  answer;
* generation times per model: a completed job's time from its estimated start to the middle of
  its last two polls (:func:`tasks.steps.poll._learn_generation`), the last
  :data:`GENERATION_SAMPLES`.

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

from tasks.record.contract import KEY_PREFIX

log = logging.getLogger(__name__)

#: Recent seconds-per-place samples of the queue (one per position change a poll saw).
QUEUE_KEY = KEY_PREFIX.removesuffix("job:") + "learn:s-per-place"
#: Recent generation times of one model: this prefix and the model's name.
GENERATION_PREFIX = KEY_PREFIX.removesuffix("job:") + "learn:generation-s:"
# A median of this many moves follows a queue that speeds up or slows down within a minute of
# polls, and one odd sample (a poll delayed by a busy worker) cannot move it.
QUEUE_SAMPLES = 64
# Enough completions for a distribution with a tail, few enough to follow NanoGPT's speed.
GENERATION_SAMPLES = 256
# Samples outlive idle gaps (a nightly batch learns from the last one); then they go.
TTL_S = 86_400
# A worker reads what the fleet learned at most this often: every poll would otherwise read 320
# numbers; a second-old view moves the aim by nothing measurable.
CACHE_S = 1.0
# Moves measured over less than this are clock noise, not the queue's speed.
MIN_MOVE_S = 0.05
# The fast speed is this quantile of the moves (one in ten was faster), once there are
# MIN_MOVES: a polled job is aimed at the start it would have if the queue ran that fast.
FAST_SHARE = 0.1
MIN_MOVES = 5


def generation_key(model: str) -> str:
    return GENERATION_PREFIX + model


def keys(client: redis.Redis) -> list[str]:
    """Every learned key in ``client``'s database (for tests and resets to delete)."""
    found = client.keys(GENERATION_PREFIX + "*")
    return [QUEUE_KEY, *(k.decode() if isinstance(k, bytes) else str(k) for k in found)]


@dataclass(frozen=True)
class Fleet:
    """What the fleet has learned, as one poll sees it."""

    generation_s: tuple[float, ...] = ()  # recent generation times of the job's model
    s_per_place_samples: tuple[float, ...] = ()

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
                pipe.lrange(generation_key(name), 0, -1)
                pipe.lrange(QUEUE_KEY, 0, -1)
                gens, moves = pipe.execute()
        except redis.RedisError as exc:
            log.debug("learned samples not read (%s); scheduling without them", exc)
            return Fleet()
        fleet = Fleet(_floats(gens), _floats(moves))
        self._cache[name] = (now, fleet)
        return fleet

    def record_generation(self, model: str | None, seconds: float) -> None:
        """Keep one completed job's generation time for its model."""
        if math.isfinite(seconds) and seconds > 0:
            self._push(generation_key(model or ""), seconds, GENERATION_SAMPLES)

    def record_move(self, places: int, seconds: float) -> None:
        """A job's queue position fell by ``places`` in ``seconds``: one speed sample."""
        if places > 0 and math.isfinite(seconds) and seconds >= MIN_MOVE_S:
            self._push(QUEUE_KEY, seconds / places, QUEUE_SAMPLES)

    def _push(self, key: str, value: float, cap: int) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(key, repr(round(value, 4)))
                pipe.ltrim(key, 0, cap - 1)
                pipe.expire(key, TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            log.debug("learned sample %s=%r dropped (%s)", key, value, exc)
