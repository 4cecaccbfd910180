"""Settings of the example project; everything that differs per deployment comes from the
environment (run from the repository root: ``DJANGO_SETTINGS_MODULE=examples.django_app.settings``).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# For the example only: a real project keeps its key out of the source.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

# The client's app: the webhook view, its WebhookEvent table and the job event stream.
INSTALLED_APPS = ["tts_client.django", "examples.django_app.speech"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "examples.django_app.urls"
WSGI_APPLICATION = "examples.django_app.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SPEECH_DB", str(BASE_DIR / "speech.sqlite3")),
        # The webhook and the API may write at the same moment; SQLite then waits.
        "OPTIONS": {"timeout": 10},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# The TTS worker, through tts_client.django: the broker, where job records live (unset: the
# broker, when it is Redis), the webhook secret, and where it should post outcomes (this app's
# webhook URL as the worker reaches it).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
TTS_REDIS_URL = os.environ.get("TTS_REDIS_URL") or None
TTS_WEBHOOK_SECRET = os.environ.get("TTS_WEBHOOK_SECRET", "")
TTS_NOTIFY_URL = os.environ.get("TTS_NOTIFY_URL", "http://127.0.0.1:8000/tts/webhook")
