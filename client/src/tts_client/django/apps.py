"""The Django app of the TTS client (its label is ``tts_client``)."""

from __future__ import annotations

from django.apps import AppConfig


class TTSClientConfig(AppConfig):
    name = "tts_client.django"
    label = "tts_client"
    verbose_name = "TTS client"
    default_auto_field = "django.db.models.BigAutoField"
