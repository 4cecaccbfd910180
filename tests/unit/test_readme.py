"""The README documents every setting and every task name (it is the contract)."""

from __future__ import annotations

from pathlib import Path

from tasks import names
from tasks.config.settings import env_names

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = sorted(
        name
        for name in env_names()
        if f"`{name}`" not in README and not (name.startswith("AWS_") and "`AWS_" in README)
    )
    assert not missing


def test_every_public_task_is_documented() -> None:
    for task in (
        names.SUBMIT_TTS,
        names.POLL_TTS,
        names.DOWNLOAD_AUDIO,
        names.NOTIFY,
        names.CANCEL,
    ):
        assert f"`{task}`" in README
        assert f"`{names.QUEUES[task]}`" in README
