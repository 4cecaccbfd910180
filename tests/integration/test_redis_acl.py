"""Redis ACL credentials in the broker URL work, and the password never reaches the log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.integration.conftest import ELEVEN, WORKER_ENV
from tests.support.worker import WorkerProcess
from workers.embedded_redis import EmbeddedRedis
from workers.receiver import Receiver
from workers.simulator import Simulator

pytestmark = pytest.mark.integration

USER, PASSWORD = "tts-worker", "acl-pw-7f3e9a1c0d"


@pytest.fixture
def acl_redis() -> Iterator[str]:
    """A Redis whose default user is off: only USER with PASSWORD gets in."""
    with EmbeddedRedis() as server:
        admin = redis.Redis(port=server.port)
        admin.acl_setuser(
            USER,
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        admin.acl_setuser("default", enabled=False)
        yield f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_worker_with_acl_credentials(
    acl_redis: str, simulator: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    with pytest.raises(redis.AuthenticationError):  # the door really is locked
        redis.Redis.from_url(acl_redis.replace(f"{USER}:{PASSWORD}@", "")).ping()
    env = {
        **WORKER_ENV,
        "CELERY_BROKER_URL": acl_redis,
        "NANOGPT_BASE_URL": simulator.base_url,
        "TTS_AUDIO_DIR": str(tmp_path / "audio"),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    caller = Celery("acl-caller", broker=acl_redis)
    try:
        jid = f"acl-{uuid.uuid4().hex}"
        caller.send_task(
            "tts.submit_tts",
            args=["ACL [[sim pending=1]]", ELEVEN],
            kwargs={"notify_url": receiver.url, "job_id": jid},
            queue="tts.submit",
        )
        assert receiver.wait_for(jid).json()["type"] == "tts.completed"
    finally:
        caller.close()
        worker.stop()
    assert PASSWORD not in worker.log
    assert USER in worker.log  # the connection line names the user, masks the password
