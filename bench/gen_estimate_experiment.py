"""Experiment (not a bench row): would a generation estimate from the text's length pass row 5?

Run: ``.venv/bin/python -m bench.gen_estimate_experiment`` (a few seconds, no lock: paper only).

The idea: TTS generation time grows with the text's length, so a seconds-per-character rate for
the model, learned online from completed jobs, gives each job at the head an expected generation
time; the schedule then aims a fraction of what is left of it (like the queued phase does with
the queue's speed) instead of polling every interval. Nothing in ``tasks/`` changes here: this
replays row 5's workload on paper (as ``bench/schedule_model.py`` does) with that rule added.

Assumptions, stated plainly:

* the workload: row 5's arrivals and generation times (``bench/row5_schedule.workload``), and per
  job a text length ``chars = gen_s / S_PER_CHAR * exp(N(0, sigma))``: generation is the length
  times a fixed rate, spread lognormally by ``sigma`` (0: length fixes generation exactly); or,
  for the graceful-degradation check, a length drawn independently of the generation time;
* the rate is learned from completed jobs only: (completion seen - first seen at the head) /
  chars, the last :data:`KEEP_SAMPLES` kept; the estimate is a low quantile of them times the
  job's length, used only after :data:`MIN_SAMPLES` completions and, with ``max_spread``, only
  while the high and low quantiles are within that factor (else: today's schedule exactly);
* at the head, while the estimate is ahead, the wait is ``ARRIVAL_FRACTION`` of what is left of
  it (never below the interval, jitter only shortening); past it, today's rule.

Besides the proposal, it prints bounds: the rate known exactly (no learning), and a head-phase
oracle that knows exactly when generation ends (the best any generation estimate could do with
today's queued phase).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import row5_schedule
from bench.rig import percentile
from tasks.pacing import schedule
from workers.simulator_scenario import UpstreamQueue

S_PER_CHAR = 0.015  # any value: the schedule only ever sees the rate it learned
KEEP_SAMPLES = 32
MIN_SAMPLES = 8
FIXED_GRID_S = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 9.0, 12.0)
JITTER_SEEDS = (1, 2, 3, 4, 5)
POOLED_WORKLOAD_SEEDS = range(5, 25)  # 5 is the row's own

Work = list[tuple[float, float]]


@dataclass(frozen=True)
class Estimator:
    quantile: float = 0.1
    max_spread: float | None = 4.0  # high/low quantile ratio beyond which lengths say nothing


def text_lengths(work: Work, sigma: float | None, seed: int) -> list[int]:
    """Per job, a length related to its generation time (``sigma``), or unrelated (None)."""
    rng = random.Random(seed)
    gens = [g for _, g in work]
    if sigma is None:
        low, high = min(gens) / S_PER_CHAR, max(gens) / S_PER_CHAR
        return [int(rng.uniform(low, high)) for _ in gens]
    return [max(1, round(g / S_PER_CHAR * math.exp(rng.gauss(0, sigma)))) for g in gens]


def learned(est: Estimator) -> Callable[[list[float], int], float | None]:
    def expected_s(samples: list[float], chars: int) -> float | None:
        if len(samples) < MIN_SAMPLES:
            return None
        low = percentile(samples, 100 * est.quantile)
        high = percentile(samples, 100 * (1 - est.quantile))
        if est.max_spread is not None and (low <= 0 or high / low > est.max_spread):
            return None
        return low * chars

    return expected_s


def replay(
    work: Work,
    chars: Sequence[int],
    slots: int,
    *,
    interval_s: float,
    max_interval_s: float,
    expect: Callable[[int, list[float], schedule.Seen], float | None] | None,
    seed: int,
    fraction: float = schedule.ARRIVAL_FRACTION,
) -> tuple[list[int], list[float]]:
    """All jobs at once in time order (the rate is learned from completions as they are seen)."""
    queue = UpstreamQueue(slots)
    placed = [queue.admit(arrival_s, gen_s) for arrival_s, gen_s in work]
    rng = random.Random(seed)
    samples: list[float] = []

    def delay_s(progress: schedule.Progress, expected_s: float | None) -> float:
        wanted_s = progress.wanted_s()
        at_head = not progress.queue_position
        if at_head and expected_s is not None and progress.at_head_s < expected_s:
            wanted_s = fraction * (expected_s - progress.at_head_s)
        wanted_s = min(max(interval_s, wanted_s), max_interval_s)
        jittered_s = wanted_s * (1 - schedule.JITTER * rng.random())
        return max(min(jittered_s, max_interval_s), schedule.MIN_DELAY_S)

    events = [(a + delay_s(schedule.Progress(None), None), n) for n, (a, _) in enumerate(work)]
    heapq.heapify(events)
    polls = [1] * len(work)
    seen = [schedule.Seen()] * len(work)
    latencies = [0.0] * len(work)
    while events:
        at, n = heapq.heappop(events)
        slot = placed[n]
        if at >= slot.ends_at:
            latencies[n] = at - slot.ends_at
            head_since = seen[n].head_since
            if head_since is not None:
                samples.append((at - head_since) / chars[n])
                del samples[:-KEEP_SAMPLES]
            continue
        progress, seen[n] = seen[n].after(queue.position(slot.index, at), at)
        expected_s = expect(n, samples, seen[n]) if expect else None
        polls[n] += 1
        heapq.heappush(events, (at + delay_s(progress, expected_s), n))
    return polls, latencies


def equal_p95_ratio(calls: float, p95_s: float, fixed: list[tuple[float, float]]) -> float:
    """``calls`` over a fixed interval's at the same p95 (interpolated; nan outside the grid)."""
    for (p_lo, c_lo), (p_hi, c_hi) in itertools.pairwise(fixed):
        if p_lo <= p95_s <= p_hi:
            w = (p95_s - p_lo) / (p_hi - p_lo) if p_hi > p_lo else 0.0
            return calls / (c_lo + w * (c_hi - c_lo))
    return math.nan


def figure(
    workloads: list[tuple[Work, list[int], int]],
    expect_for: Callable[
        [Work, list[int]], Callable[[int, list[float], schedule.Seen], float | None]
    ]
    | None,
    seed: int,
    fraction: float = schedule.ARRIVAL_FRACTION,
) -> tuple[float, float, float]:
    """(equal-p95 ratio, calls/job, p95 s), with calls and latencies pooled over ``workloads``."""

    def pooled(interval_s: float, max_interval_s: float, learn: bool) -> tuple[float, float]:
        calls: list[int] = []
        lats: list[float] = []
        for work, chars, slots in workloads:
            expect = expect_for(work, chars) if learn and expect_for else None
            c, lat = replay(
                work,
                chars,
                slots,
                interval_s=interval_s,
                max_interval_s=max_interval_s,
                expect=expect,
                seed=seed,
                fraction=fraction,
            )
            calls += c
            lats += lat
        return statistics.mean(calls), percentile(lats, 95)

    fixed = sorted(pooled(f, f, False)[::-1] for f in FIXED_GRID_S)
    calls, p95_s = pooled(*row5_schedule.SCHEDULE_S, True)
    return equal_p95_ratio(calls, p95_s, fixed), calls, p95_s


def proposal(est: Estimator) -> Callable[[Work, list[int]], Callable[..., float | None]]:
    expected_s = learned(est)
    return lambda work, chars: lambda n, samples, seen: expected_s(samples, chars[n])


def known_rate(z: float, sigma: float) -> Callable[[Work, list[int]], Callable[..., float | None]]:
    """The true rate's quantile at ``z`` standard deviations, known from the start."""
    factor = S_PER_CHAR * math.exp(z * sigma)
    return lambda work, chars: lambda n, samples, seen: chars[n] * factor


def head_oracle(slots: int) -> Callable[[Work, list[int]], Callable[..., float | None]]:
    def for_work(work: Work, chars: list[int]) -> Callable[..., float | None]:
        queue = UpstreamQueue(slots)
        ends = [queue.admit(a, g).ends_at for a, g in work]

        def expect(n: int, samples: list[float], seen: schedule.Seen) -> float | None:
            return None if seen.head_since is None else ends[n] - seen.head_since

        return expect

    return for_work


def main() -> None:
    size = row5_schedule.SIZES["full"]
    cases: list[tuple[str, float | None]] = [
        ("length fixes generation (sigma 0)", 0.0),
        ("lognormal spread sigma 0.25", 0.25),
        ("lognormal spread sigma 0.5", 0.5),
        ("length unrelated to generation", None),
    ]
    rules: list[tuple[str, Callable[[Work, list[int]], Callable[..., float | None]] | None]] = [
        ("today (no estimate)", None),
        ("learned q10, spread <= 4", proposal(Estimator(0.1, 4.0))),
        ("learned q20, spread <= 4", proposal(Estimator(0.2, 4.0))),
        ("learned q20, no spread check", proposal(Estimator(0.2, None))),
    ]
    for title, seeds in (
        ("Row 5's own workload (seed 5); mean over jitter seeds 1-5", (size.seed,)),
        (
            "Pooled over 20 workloads like row 5's (seeds 5-24), jitter seed 1",
            POOLED_WORKLOAD_SEEDS,
        ),
    ):
        print(f"\n{title}: equal-p95 ratio, calls/job, p95")
        sizes = [dataclasses.replace(size, seed=s) for s in seeds]
        for case, sigma in cases:
            loads = [
                (w, text_lengths(w, sigma, s.seed * 11), s.slots)
                for s in sizes
                for w in [row5_schedule.workload(s)]
            ]
            jitters = JITTER_SEEDS if len(seeds) == 1 else (1,)
            extra: list[tuple[str, Callable[[Work, list[int]], Callable[..., float | None]]]] = []
            if sigma is not None:
                extra = [("rate's q05 known (no learning)", known_rate(-1.645, sigma))]
            for name, rule in [*rules, *extra]:
                figs = [figure(loads, rule, j) for j in jitters]
                _show(case, name, figs)
            if sigma == 0.0:  # the oracle does not look at lengths: once is enough
                for fraction in (schedule.ARRIVAL_FRACTION, 1.0):
                    name = f"head oracle, fraction {fraction:g}"
                    oracle = head_oracle(size.slots)
                    _show("", name, [figure(loads, oracle, j, fraction) for j in jitters])


def _show(case: str, name: str, figs: list[tuple[float, float, float]]) -> None:
    ratios = " ".join(f"{f[0]:.2f}" for f in figs)
    print(
        f"  {case:36s} {name:32s} ratio {statistics.mean(f[0] for f in figs):.2f}"
        f" [{ratios}] calls {statistics.mean(f[1] for f in figs):.2f}"
        f" p95 {statistics.mean(f[2] for f in figs):.2f} s"
    )


if __name__ == "__main__":
    main()
