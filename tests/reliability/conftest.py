"""Fixtures of the fault-injection suite; its closing table is tests/reliability/table.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.rig import Figures, Rig
from tests.reliability.table import add_rows


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[list[Figures]]:
    rows: list[Figures] = []
    yield rows
    add_rows(request.node, rows)
