"""Follow one job until it ends, showing its status, queue position, polls made and elapsed time.

Shared by ``tts-worker demo`` and ``--wait``. On a terminal the line updates in place (rich
``Live``); anywhere else (a pipe, a CI log) a line is printed each time the job changes, so the
output stays readable. ``--json`` callers pass no console and see nothing until the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.text import Text

from tasks.record.jobs import Job
from tasks.record.states import FINAL, Status

# How often the job record is read: fast enough for a smooth clock, a trivial load on Redis.
REFRESH_S = 0.2
# Waiting for a job also covers its download and webhook after the last poll.
WAIT_SLACK_S = 60.0


class WaitTimeout(Exception):
    """The job did not end within the time the caller was willing to wait."""

    def __init__(self, job: Job | None, waited_s: float) -> None:
        status = job.status if job else "not picked up by any worker"
        super().__init__(f"gave up waiting after {waited_s:.0f} s (status: {status})")
        self.job = job


def describe(job: Job | None, elapsed_s: float) -> str:
    """One line for the job as it stands, e.g. ``polling · queue position 2 · 3 polls · 4.1 s``."""
    parts = ["queued · waiting for a worker"] if job is None else [job.status]
    if job is not None and job.status == Status.POLLING and job.queue_position is not None:
        parts.append(f"queue position {job.queue_position}")
    if job is not None and (
        job.polls or job.status in (Status.POLLING, Status.DOWNLOADING, *FINAL)
    ):
        parts.append(f"{job.polls} poll" + ("" if job.polls == 1 else "s"))
    parts.append(f"{elapsed_s:.1f} s")
    return " · ".join(parts)


def _key(job: Job | None) -> tuple[object, ...]:
    return (None,) if job is None else (job.status, job.queue_position, job.polls)


def follow(
    read: Callable[[], Job | None],
    *,
    timeout_s: float,
    console: Console | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Job:
    """Read the job with ``read()`` until it is completed or failed, and return it.

    Raises :class:`WaitTimeout` after ``timeout_s``. With ``console=None`` nothing is shown.
    """
    if console is None:
        return _loop(read, timeout_s, clock, sleep, lambda _job, _elapsed_s: None)
    if not console.is_terminal:
        return _loop(read, timeout_s, clock, sleep, _ChangePrinter(console))
    with Live(console=console, auto_refresh=False) as live:

        def redraw(job: Job | None, elapsed_s: float) -> None:
            live.update(Text(f"  {describe(job, elapsed_s)}"), refresh=True)

        return _loop(read, timeout_s, clock, sleep, redraw)


def outcome_lines(job: Job) -> list[str]:
    """What a finished job produced, as ``label  value`` lines for people."""
    outcome = job.outcome or {}
    if job.status == Status.COMPLETED and "audio" in outcome:
        audio = outcome["audio"]
        return [
            f"audio    {audio['path']}",
            f"size     {audio['bytes']:,} bytes ({audio['content_type']})",
            f"sha256   {audio['sha256']}",
        ]
    return [f"error    {error_text(job)}"]


def error_text(job: Job) -> str:
    """``CODE: message`` of a failed job."""
    error = (job.outcome or {}).get("error") or {}
    return f"{error.get('code', 'UNKNOWN')}: {error.get('message', 'no message')}"


class _ChangePrinter:
    """Prints a line when status, queue position or poll count change (not every tick)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last: tuple[object, ...] | None = None

    def __call__(self, job: Job | None, elapsed_s: float) -> None:
        key = (None,) if job is None else (job.status, job.queue_position, job.polls)
        if key != self._last:
            self._last = key
            self._console.print(f"  {describe(job, elapsed_s)}", highlight=False)


def _loop(
    read: Callable[[], Job | None],
    timeout_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    show: Callable[[Job | None, float], None],
) -> Job:
    started = clock()
    while True:
        job = read()
        elapsed_s = clock() - started
        show(job, elapsed_s)
        if job is not None and job.status in FINAL:
            return job
        if elapsed_s >= timeout_s:
            raise WaitTimeout(job, elapsed_s)
        sleep(REFRESH_S)
