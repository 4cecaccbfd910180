"""The Celery app, the command line and the threads of the TTS worker. The settings live in
:mod:`tasks.config.settings`; they are re-exported here."""

from __future__ import annotations

from typing import Any

from tasks.config.settings import Settings, get_settings

__all__ = ["Settings", "app", "get_settings"]


def __getattr__(name: str) -> Any:
    # The app is built on first use, so importing `workers` (or `workers.cli`) never builds Celery.
    if name == "app":
        from workers.app import app

        return app
    raise AttributeError(name)
