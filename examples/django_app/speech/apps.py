from __future__ import annotations

from django.apps import AppConfig


class SpeechConfig(AppConfig):
    name = "examples.django_app.speech"
    label = "speech"
