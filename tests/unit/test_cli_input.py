"""Bad input and unreachable services: one line on stderr, the right exit code, no traceback.

In process (CliRunner); nothing here needs a broker, because every check runs before the CLI
connects to one, or the test points it at a port where nothing listens.
"""

from __future__ import annotations

import pytest

from tests.support.cli import assert_one_line, invoke
from workers.embedded_redis import free_port

ELEVEN = "Elevenlabs-Turbo-V2.5"


@pytest.fixture
def nowhere() -> dict[str, str]:
    """A broker URL with nothing behind it: the input checks must fire before any connection."""
    return {"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["speak", "", "--model", ELEVEN], "text must be a non-empty string"),
        (["speak", "   ", "--model", ELEVEN], "text must be a non-empty string"),
        (["speak", "x" * 20_001, "--model", ELEVEN], "text is longer than 20000 characters"),
        (["speak", "Hello", "--model", ""], "model must be a non-empty string"),
        (["speak", "Hello", "-m", ELEVEN, "--notify-url", "ftp://x/y"], "absolute http(s) URL"),
        (["speak", "Hello", "-m", ELEVEN, "--notify-url", "not a url"], "absolute http(s) URL"),
        (["speak", "Hello", "-m", ELEVEN, "--job-id", "has space"], "job_id may hold only"),
        (["poll", "run-1", "--model", ""], "model must be a non-empty string"),
        (["poll", "run-1", "-m", ELEVEN, "--cost", "-1"], "cost must be at least"),
        (["poll", "run 1", "-m", ELEVEN], "the run id cannot be the job id"),
        (["poll", "run-1", "-m", ELEVEN, "--notify-url", "http://"], "absolute http(s) URL"),
        (["status", "no/slashes"], "job_id may hold only"),
        (["status", "x" * 129], "job_id is longer than 128 characters"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, nowhere: dict[str, str]
) -> None:
    result = invoke(args, nowhere)

    assert result.exit_code == 2
    assert result.stdout == ""
    line = assert_one_line(result.stderr)
    assert line.startswith("tts-worker: ")
    assert message in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["speak"], "Missing argument 'text'"),
        (["speak", "Hello"], "Missing option '--model'"),
        (["speak", "Hello", "-m", ELEVEN, "--bogus"], "No such option: --bogus"),
        (["poll", "run-1", "-m", ELEVEN, "--cost", "cheap"], "Invalid value for '--cost'"),
        (["simulate", "--port", "70000"], "Invalid value for '--port'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = invoke(args)

    assert result.exit_code == 2
    line = assert_one_line(result.stderr)
    assert message in line
    assert "--help" in line


def test_bad_configuration_is_one_line_and_exit_2() -> None:
    result = invoke(["status", "job-1"], {"TTS_WEBHOOK_SECRET": "not-base64!"})

    assert result.exit_code == 2
    line = assert_one_line(result.stderr)
    assert "bad configuration: TTS_WEBHOOK_SECRET" in line


@pytest.mark.parametrize(
    "args",
    [
        ["speak", "Hello", "--model", ELEVEN],
        ["speak", "Hello", "--model", ELEVEN, "--json"],
        ["poll", "run-1", "--model", ELEVEN],
        ["status", "job-1"],
        ["status", "job-1", "--json"],
    ],
)
def test_broker_down_is_one_line_and_exit_1(args: list[str], nowhere: dict[str, str]) -> None:
    result = invoke(args, nowhere)

    assert result.exit_code == 1
    assert result.stdout == ""
    line = assert_one_line(result.stderr)
    assert "cannot reach the broker" in line or "cannot read job state" in line
    assert nowhere["CELERY_BROKER_URL"] in line


def test_no_command_shows_the_commands() -> None:
    result = invoke([])

    assert result.exit_code == 0
    for command in ("speak", "poll", "status", "simulate", "demo"):
        assert command in result.stdout
