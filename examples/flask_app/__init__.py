"""A Flask app that sends text to the TTS worker through ``tts_client.flask`` and applies its
signed webhook."""
