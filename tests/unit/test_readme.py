"""The README documents every setting and every task name (it is the contract)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices

from tasks import names
from workers.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def env_names() -> set[str]:
    found: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            found.add(alias)
        elif isinstance(alias, AliasChoices):
            found |= {a for a in alias.choices if isinstance(a, str)}
    return found


def test_every_setting_is_documented() -> None:
    missing = sorted(
        name
        for name in env_names()
        if f"`{name}`" not in README and not (name.startswith("AWS_") and "`AWS_" in README)
    )
    assert not missing


def test_every_public_task_is_documented() -> None:
    for task in names.PIPELINE:
        assert f"`{task}`" in README
        assert f"`{names.QUEUES[task]}`" in README
