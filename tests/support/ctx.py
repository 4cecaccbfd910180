"""A :class:`tasks.steps.context.Ctx` for in-process tests: the real job store on a test Redis, a
dispatcher that records what it would publish, and whatever else the test hands in."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks.config.settings import Settings
from tasks.pacing.budget import Budget
from tasks.pacing.dispatch import Dispatcher
from tasks.pacing.learning import Learning
from tasks.record.jobs import JobStore
from tasks.steps.context import Ctx

# A key the settings accept; no test sends it anywhere but a loopback simulator.
TEST_KEY = "test-key-0c1d"


@dataclass
class Sent:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task_id: str | None = None


@dataclass
class Outbox:
    """What a step published, in order."""

    sent: list[Sent] = field(default_factory=list)

    def __call__(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
    ) -> None:
        self.sent.append(Sent(name, tuple(args), dict(kwargs), task_id))

    def names(self) -> list[str]:
        return [s.name for s in self.sent]


def _unused(*_: Any, **__: Any) -> Any:
    raise AssertionError("this test's context has no such part")


def settings(**env: str) -> Settings:
    """Settings from variables given here only (the process environment still applies to
    variables not named; tests name what they rely on)."""
    return Settings(**{"NANOGPT_API_KEY": TEST_KEY, **env})  # type: ignore[arg-type]


def make_ctx(
    client: redis.Redis,
    *,
    env: dict[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    upstream: Any = None,
    fetch: Any = None,
    audio_store: Any = None,
    webhook: Any = None,
    outbox: Outbox | None = None,
) -> tuple[Ctx, Outbox]:
    # The NanoGPT budget is off unless a test sets TTS_UPSTREAM_RATE: the steps' own tests make
    # calls at a frozen clock, which a budget would defer (tests/unit/test_budget.py tests it).
    s = settings(**{"TTS_UPSTREAM_RATE": "0", **(env or {})})
    box = outbox or Outbox()
    ctx = Ctx(
        settings=s,
        jobs=JobStore(client, ttl_s=s.job_ttl_s, clock=clock),
        upstream=upstream or _unused,
        fetch=fetch or _unused,
        audio_store=audio_store or _unused,
        webhook=webhook or _unused,
        dispatch=Dispatcher(box, lambda: s),
        clock=clock,
        budget=Budget(
            client,
            rate_per_s=s.upstream_rate_per_s,
            burst=s.upstream_burst,
            clock=clock,
            script_clock=clock,  # the test's frozen time, not Redis'
        ),
        learning=Learning(client, clock=clock),
    )
    return ctx, box
