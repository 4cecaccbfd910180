"""A redis-server of the simulation's own: it flushes its databases between seeds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from workers.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def sim_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()
