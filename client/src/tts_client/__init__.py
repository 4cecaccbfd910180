"""The app's side of tts-worker: send TTS jobs, read, cancel and watch them, verify webhooks.

::

    from tts_client import TTSClient, verify_webhook

    tts = TTSClient("redis://localhost:6379/0")
    job_id = tts.submit("Hello", "Elevenlabs-Turbo-V2.5", notify_url="https://app/hook")
    for update in tts.watch(job_id, timeout=300):
        print(update.status, update.queue_position, update.eta_s)
    event = verify_webhook(secret, request_body, request_headers)  # in the webhook view

Django: :mod:`tts_client.django`; Flask: :mod:`tts_client.flask`. This package imports no
code of the worker; it speaks the worker's contract (task names, queues, the job record, the
progress stream, the webhook), checked against the worker's own code by tests/client.
"""

from __future__ import annotations

from tts_client.client import TTSClient
from tts_client.models import Audio, Error, Job, TTSEvent, Update
from tts_client.webhooks import WebhookVerificationError, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "Audio",
    "Error",
    "Job",
    "TTSClient",
    "TTSEvent",
    "Update",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
