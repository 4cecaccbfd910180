"""NanoGPT's account-wide rate limit for the simulator, decided without any HTTP.

NanoGPT allows "25 requests per second per account, across endpoints" (reference/nanogpt-tts.md).
:class:`SlidingWindowLimiter` models it as a sliding window: a request is admitted unless the
requests admitted in the last :data:`WINDOW_S` seconds already reach the limit.

Refused requests do not count against the window. A client that keeps hammering a full window
is therefore still served at the full rate once earlier requests age out, which is how a limit
that "allows N per second" reads; a limiter that also counted refusals would lock such a client
out for as long as it kept retrying, and would make the benchmark's figure of wasted calls
depend on the limiter's bookkeeping rather than on the worker's behaviour.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from workers.simulator_scenario import Answer, json_answer

__all__ = ["RETRY_AFTER_S", "WINDOW_S", "SlidingWindowLimiter", "rate_limited_answer"]

WINDOW_S = 1.0  # NanoGPT states its limit per second
# What the simulator sends as Retry-After: whole seconds, as HTTP allows, and never more than
# one window, after which every request now in the window has aged out.
RETRY_AFTER_S = 1


class SlidingWindowLimiter:
    """At most ``limit_per_s`` admitted requests in any :data:`WINDOW_S`-second window.

    A request at time ``t`` sees the admitted requests at times ``s`` with ``t - s < WINDOW_S``:
    one admitted exactly a window earlier has just left. A fractional limit admits its whole
    part per window (2.5 admits 2). Not thread-safe: the simulator calls it under its lock, as
    it does :class:`~workers.simulator_scenario.UpstreamQueue`.
    """

    def __init__(self, limit_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: seconds on any clock that never goes back (tests pass a fake one).

        Raises:
            ValueError: ``limit_per_s`` is below 1 or not finite; a window could then admit
                nothing at all (use no limiter for "no limit").
        """
        if not math.isfinite(limit_per_s) or limit_per_s < 1:
            raise ValueError(f"rate limit must be a finite number >= 1, got {limit_per_s!r}")
        self.limit_per_s = limit_per_s
        self._max_in_window = math.floor(limit_per_s)
        self._clock = clock
        self._admitted_at: deque[float] = deque()  # oldest first, all within the window

    def admit(self) -> bool:
        """Count one request now and return True, or return False (and count nothing)."""
        now = self._clock()
        while self._admitted_at and now - self._admitted_at[0] >= WINDOW_S:
            self._admitted_at.popleft()
        if len(self._admitted_at) >= self._max_in_window:
            return False
        self._admitted_at.append(now)
        return True


def rate_limited_answer(limit_per_s: float) -> Answer:
    """The 429 for a request over the limit, e.g. "Rate limit exceeded: 25 requests per second"."""
    limit = float(limit_per_s)  # an int is a float to mypy, not at run time
    number = int(limit) if limit.is_integer() else limit  # 25, not 25.0
    message = f"Rate limit exceeded: {number} requests per second"
    return json_answer(429, {"error": message}, (("Retry-After", str(RETRY_AFTER_S)),))
