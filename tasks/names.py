"""Stable task names and queues: the contract for apps that ``send_task`` without our code."""

from __future__ import annotations

SUBMIT_TTS = "tts.submit_tts"
POLL_TTS = "tts.poll_tts"
DOWNLOAD_AUDIO = "tts.download_audio"
NOTIFY = "tts.notify"
# Sent by callers: end a job that has not ended (CANCELLED).
CANCEL = "tts.cancel"
# Scheduled (celery beat), not sent by callers: retention for the local audio directory.
CLEANUP_AUDIO = "tts.cleanup_audio"

# One queue per step, so a slow audio host or a dead webhook receiver never starves polling.
SUBMIT_QUEUE = "tts.submit"
POLL_QUEUE = "tts.poll"
DOWNLOAD_QUEUE = "tts.download"
NOTIFY_QUEUE = "tts.notify"
# Celery's own default queue: where a bare client's ``send_task`` lands without ``queue=``.
# Workers consume it too only when TTS_CONSUME_DEFAULT_QUEUE is on (tasks/config/celery_config.py).
CELERY_DEFAULT_QUEUE = "celery"

#: Where each task is routed; apps sending by name pass ``queue=QUEUES[name]``.
QUEUES = {
    SUBMIT_TTS: SUBMIT_QUEUE,
    POLL_TTS: POLL_QUEUE,
    DOWNLOAD_AUDIO: DOWNLOAD_QUEUE,
    NOTIFY: NOTIFY_QUEUE,
    # A cancel is one Redis script, quick like a poll: never stuck behind a slow download.
    CANCEL: POLL_QUEUE,
    # Workers that download are the ones with the audio directory mounted.
    CLEANUP_AUDIO: DOWNLOAD_QUEUE,
}
