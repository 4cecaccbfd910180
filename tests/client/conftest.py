"""Fixtures of the client's tests: a Redis database of their own, used as the broker and as
the job-state Redis, emptied before each test, on the redis-server no worker ever uses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from tts_client import TTSClient
from workers.embedded_redis import EmbeddedRedis

# A database no other test module uses on the quiet server (the job-store unit tests use 0).
CLIENT_DB = 7


@pytest.fixture
def client_redis_url(quiet_redis_server: EmbeddedRedis) -> Iterator[str]:
    url = f"redis://127.0.0.1:{quiet_redis_server.port}/{CLIENT_DB}"
    db = redis.Redis.from_url(url)
    db.flushdb()
    db.close()
    return url


@pytest.fixture
def db(client_redis_url: str) -> Iterator[redis.Redis]:
    """The test's database, decoded to text."""
    conn = redis.Redis.from_url(client_redis_url, decode_responses=True)
    yield conn
    conn.close()


@pytest.fixture
def tts(client_redis_url: str) -> Iterator[TTSClient]:
    """A client whose broker and job-state Redis are the test's database."""
    with TTSClient(client_redis_url) as client:
        yield client


def published(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Every task message waiting in ``queue``, taken off it: name, args, kwargs, routing."""
    messages = []
    with Connection(broker_url) as conn, conn.SimpleQueue(queue) as q:
        while True:
            try:
                message = q.get(block=False)
            except q.Empty:
                break
            args, kwargs, _embed = message.decode()
            messages.append(
                {
                    "task": message.headers["task"],
                    "args": args,
                    "kwargs": kwargs,
                    "id": message.headers["id"],
                    "content_type": message.content_type,
                    "routing_key": message.delivery_info.get("routing_key"),
                    "argsrepr": message.headers.get("argsrepr"),
                    "kwargsrepr": message.headers.get("kwargsrepr"),
                }
            )
            message.ack()
    return messages
