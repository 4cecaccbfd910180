"""Everything a Redis holds, as text: for tests that prove a secret is nowhere in it."""

from __future__ import annotations

import redis


def dump(url: str) -> str:
    """Every hash, list, sorted set and string in the database at ``url``, repr'd."""
    client = redis.Redis.from_url(url)
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            parts.append(repr(client.hgetall(key)))
        elif kind == b"list":
            parts.append(repr(client.lrange(key, 0, -1)))
        elif kind == b"zset":
            parts.append(repr(client.zrange(key, 0, -1)))
        elif kind == b"string":
            parts.append(repr(client.get(key)))
    client.close()
    return "\n".join(parts)
