"""The live progress view: what it says about a job, when it prints, when it gives up."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from rich.console import Console

from tasks.record.jobs import Job
from workers.progress import WaitTimeout, describe, follow, outcome_lines

AUDIO = {"path": "/a/b.wav", "content_type": "audio/wav", "bytes": 12844, "sha256": "ab" * 32}


def job(status: str, *, polls: int = 0, queue: int | None = None, **fields: object) -> Job:
    return Job(job_id="j1", status=status, polls=polls, queue_position=queue, **fields)


def test_describe_each_stage() -> None:
    assert describe(None, 0.04) == "queued · waiting for a worker · 0.0 s"
    assert describe(job("submitting"), 0.3) == "submitting · 0.3 s"
    assert describe(job("polling", polls=1, queue=3), 1.25) == (
        "polling · queue position 3 · 1 poll · 1.2 s"
    )
    assert describe(job("polling", polls=2), 2.0) == "polling · 2 polls · 2.0 s"
    assert describe(job("completed", polls=5, queue=0), 3.0) == "completed · 5 polls · 3.0 s"


def test_outcome_lines() -> None:
    done = job("completed", outcome={"type": "tts.completed", "audio": AUDIO})
    assert outcome_lines(done) == [
        "audio    /a/b.wav",
        "size     12,844 bytes (audio/wav)",
        f"sha256   {'ab' * 32}",
    ]
    error = {"code": "CONTENT_POLICY_VIOLATION", "message": "Content rejected"}
    failed = job("failed", outcome={"type": "tts.failed", "error": error})
    assert outcome_lines(failed) == ["error    CONTENT_POLICY_VIOLATION: Content rejected"]


class Script:
    """Stands in for Redis (a list of job states) and the clock (advanced by each sleep)."""

    def __init__(self, states: list[Job | None]) -> None:
        self.states = states
        self.reads = 0
        self.now = 100.0

    def read(self) -> Job | None:
        state = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        return state

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(script: Script, console: Console | None, timeout_s: float = 60.0) -> Job:
    return follow(
        script.read, timeout_s=timeout_s, console=console, clock=script.clock, sleep=script.sleep
    )


def plain_console() -> tuple[Console, Callable[[], str]]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer.getvalue


def test_follow_returns_the_final_job_and_prints_each_change_once() -> None:
    final = job("completed", polls=3)
    script = Script(
        [
            None,
            None,
            job("polling", polls=1, queue=2),
            job("polling", polls=1, queue=2),
            job("polling", polls=2, queue=1),
            job("downloading", polls=3),
            final,
        ]
    )
    console, text = plain_console()

    assert run(script, console) is final

    lines = text().splitlines()
    assert [line.strip().rsplit(" · ", 1)[0] for line in lines] == [
        "queued · waiting for a worker",
        "polling · queue position 2 · 1 poll",
        "polling · queue position 1 · 2 polls",
        "downloading · 3 polls",
        "completed · 3 polls",
    ]
    assert lines[-1].endswith("· 1.2 s")  # six waits of 0.2 s


def test_follow_on_a_terminal_redraws_one_line() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    script = Script([job("polling", polls=1, queue=2), job("completed", polls=2)])

    assert run(script, console).status == "completed"
    assert "completed · 2 polls · 0.2 s" in buffer.getvalue()


def test_follow_without_console_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    script = Script([job("polling", polls=1), job("failed", polls=1)])

    assert run(script, None).status == "failed"
    assert capsys.readouterr() == ("", "")


def test_follow_gives_up_after_the_timeout() -> None:
    script = Script([job("polling", polls=1, queue=9)])

    with pytest.raises(WaitTimeout, match=r"gave up waiting after 5 s \(status: polling\)"):
        run(script, None, timeout_s=5.0)
    assert script.now - 100.0 == pytest.approx(5.0)


def test_follow_says_when_no_worker_took_the_job() -> None:
    with pytest.raises(WaitTimeout, match="not picked up by any worker"):
        run(Script([None]), None, timeout_s=1.0)
