"""What celery beat sends: the audio clean-up while a retention is set, and nothing else."""

from __future__ import annotations

from celery import Celery

from tasks import names
from tasks.config.celery_config import celery_config
from tasks.config.settings import Settings


def beat_app(**env: str) -> Celery:
    app = Celery("beat-test", set_as_current=False)
    app.config_from_object(celery_config(Settings(**env)))  # type: ignore[arg-type]
    return app


def test_without_retention_beat_has_nothing_to_send() -> None:
    assert beat_app().conf.beat_schedule == {}


def test_with_retention_beat_sends_the_clean_up_every_interval() -> None:
    schedule = beat_app(TTS_AUDIO_RETENTION="7", TTS_CLEANUP_INTERVAL="90").conf.beat_schedule
    assert list(schedule.values()) == [
        {
            "task": names.CLEANUP_AUDIO,
            "schedule": 90.0,
            "options": {"queue": names.DOWNLOAD_QUEUE},
        }
    ]


def test_the_default_interval_is_an_hour() -> None:
    [entry] = beat_app(TTS_AUDIO_RETENTION="7").conf.beat_schedule.values()
    assert entry["schedule"] == 3600.0


def test_every_scheduled_task_is_one_the_worker_runs() -> None:
    from workers.app import app as worker_app

    worker_app.loader.import_default_modules()
    for entry in beat_app(TTS_AUDIO_RETENTION="7").conf.beat_schedule.values():
        assert entry["task"] in worker_app.tasks
