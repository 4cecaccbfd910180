from __future__ import annotations

from django.apps import AppConfig


class SpeechConfig(AppConfig):
    name = "examples.django_app.speech"
    label = "speech"

    def ready(self) -> None:
        # Connects the webhook_received receiver.
        from examples.django_app.speech import receivers  # noqa: F401
