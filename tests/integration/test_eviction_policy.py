"""A job store that would evict job records when full: the worker refuses to start, saying
why. One whose policy cannot be read (CONFIG denied by an ACL) is started with a warning."""

from __future__ import annotations

import logging
import os

import pytest
import redis

from tests.support.ctx import settings
from tests.support.worker import start_refused
from workers import signals
from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_worker_refuses_a_job_store_that_evicts(worker_env: dict[str, str]) -> None:
    with EmbeddedRedis() as store:
        redis.Redis(port=store.port).config_set("maxmemory-policy", "allkeys-lru")
        # The broker stays the shared one: only the job store evicts.
        env = {**os.environ, **worker_env, "TTS_REDIS_URL": store.url}
        done = start_refused(env)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "has maxmemory-policy allkeys-lru" in output
    assert "Set maxmemory-policy noeviction" in output
    assert "will not start" in output
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lfu"])
def test_the_check_refuses_every_evicting_policy(policy: str) -> None:
    with EmbeddedRedis() as store:
        redis.Redis(port=store.port).config_set("maxmemory-policy", policy)
        with pytest.raises(signals.ConfigurationError, match=policy):
            signals.check_job_store(settings(TTS_REDIS_URL=store.url))


def test_the_check_passes_noeviction() -> None:
    with EmbeddedRedis() as store:
        policy = redis.Redis(port=store.port, decode_responses=True).config_get("maxmemory-*")
        assert policy["maxmemory-policy"] == "noeviction"
        signals.check_job_store(settings(TTS_REDIS_URL=store.url))


def test_config_denied_by_an_acl_warns_and_starts(caplog: pytest.LogCaptureFixture) -> None:
    user, password = "tts-no-config", "acl-pw-2b9d41e7"
    with EmbeddedRedis() as store:
        admin = redis.Redis(port=store.port)
        admin.config_set("maxmemory-policy", "allkeys-lru")  # evicting, but hidden from us
        admin.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-config"],
        )
        url = f"redis://{user}:{password}@127.0.0.1:{store.port}/0"
        with caplog.at_level(logging.WARNING, logger="workers"):
            signals.check_job_store(settings(TTS_REDIS_URL=url))
    assert "cannot read maxmemory-policy" in caplog.text
    assert "NOPERM" in caplog.text or "permission" in caplog.text.lower()
    assert password not in caplog.text


def test_a_job_store_without_durable_writes_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No AOF, or AOF with everysec: the worker starts (most apps' Redis keeps no AOF) but says
    what a crash of the job store can cost; appendfsync always is quiet."""
    with EmbeddedRedis() as store:
        admin = redis.Redis(port=store.port)
        admin.config_set("appendonly", "no")
        with caplog.at_level(logging.WARNING, logger="workers"):
            signals.check_job_store(settings(TTS_REDIS_URL=store.url))
        assert "keeps no AOF" in caplog.text
        assert "POSTed (billed) twice" in caplog.text

        caplog.clear()
        admin.config_set("appendonly", "yes")
        admin.config_set("appendfsync", "everysec")
        with caplog.at_level(logging.WARNING, logger="workers"):
            signals.check_job_store(settings(TTS_REDIS_URL=store.url))
        assert "keeps appendfsync everysec" in caplog.text

        caplog.clear()
        admin.config_set("appendfsync", "always")
        with caplog.at_level(logging.WARNING, logger="workers"):
            signals.check_job_store(settings(TTS_REDIS_URL=store.url))
        assert "job store" not in caplog.text
