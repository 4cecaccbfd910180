"""A Django project that sends text to the TTS worker through ``tts_client.django`` and applies
its signed webhook."""
