"""Speech jobs: asked of the TTS worker, completed by its webhook."""
