"""The Celery app, the settings and the command line of the TTS worker."""

from __future__ import annotations

from typing import Any

from tasks.config.settings import Settings, get_settings

__all__ = ["Settings", "app", "get_settings"]


def __getattr__(name: str) -> Any:
    # The app is built on first use, so `import tasks.config.settings` never builds Celery.
    if name == "app":
        from workers.app import app

        return app
    raise AttributeError(name)
