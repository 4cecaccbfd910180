"""The submit's hard time limit outlasts its POST's claim, whatever the HTTP timeouts are.

Were it shorter (it was a fixed 120 s against a 160 s claim with the defaults), Celery would
kill a submit still reading a slow 200 answer, and the job would end ``SUBMIT_UNCONFIRMED``
although NanoGPT answered. The limit is read from the task a worker app actually registers.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import Celery

import tasks.adapters.tts  # registers the shared tasks the apps below bind
from tasks import names
from tasks.config.celery_config import celery_config, submit_time_limit_s
from tasks.config.settings import Settings
from tasks.steps.base import post_lease_s
from tests.support.ctx import settings

EXTREMES = [
    {},  # the defaults: 5 s connect, 30 s read, 120 s of audio
    {
        "TTS_HTTP_CONNECT_TIMEOUT": "0.01",
        "TTS_HTTP_READ_TIMEOUT": "0.01",
        "TTS_DOWNLOAD_TIMEOUT": "0.01",
    },
    {"TTS_HTTP_READ_TIMEOUT": "3600", "TTS_DOWNLOAD_TIMEOUT": "86400"},
    {"TTS_HTTP_CONNECT_TIMEOUT": "600", "TTS_HTTP_READ_TIMEOUT": "0.5"},
]


@pytest.fixture(params=EXTREMES, ids=["defaults", "tiny", "huge", "slow-connect"])
def s(request: pytest.FixtureRequest) -> Settings:
    return settings(**request.param)


def registered_limit(s: Settings) -> Iterator[float]:
    app = Celery("limits", set_as_current=False)
    app.config_from_object(celery_config(s))
    try:
        yield float(app.tasks[names.SUBMIT_TTS].time_limit)
    finally:
        app.close()


def test_the_registered_submit_outlives_its_post_claim(s: Settings) -> None:
    claim_s = post_lease_s(SimpleNamespace(settings=s))  # type: ignore[arg-type]
    (limit_s,) = registered_limit(s)
    assert limit_s == submit_time_limit_s(s)
    # Room for the budget and the record before the claim, and for recording the answer.
    assert limit_s >= claim_s + 10


def test_the_other_tasks_keep_their_own_limits() -> None:
    app = Celery("limits", set_as_current=False)
    app.config_from_object(celery_config(settings()))
    try:
        assert app.tasks[names.POLL_TTS].time_limit == tasks.adapters.tts.API_TIME_LIMIT_S
        assert (
            app.tasks[names.DOWNLOAD_AUDIO].time_limit == tasks.adapters.tts.DOWNLOAD_TIME_LIMIT_S
        )
    finally:
        app.close()
