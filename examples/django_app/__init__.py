"""A Django project that sends text to the TTS worker by task name and takes its signed webhook."""
