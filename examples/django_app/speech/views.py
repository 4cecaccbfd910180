"""The speech API and the worker's webhook."""

from __future__ import annotations

import functools
import json

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from examples.django_app.speech import tts
from examples.django_app.speech.models import SpeechJob, WebhookDelivery


@functools.cache
def _verifier() -> Webhook:
    if not settings.TTS_WEBHOOK_SECRET:
        raise RuntimeError("TTS_WEBHOOK_SECRET is required: unsigned webhooks are not accepted")
    return Webhook(settings.TTS_WEBHOOK_SECRET)


# A JSON API for the example; in a real project it sits behind the project's authentication.
@csrf_exempt
@require_POST
def create_speech(request: HttpRequest) -> JsonResponse:
    """``{"text", "model", "voice"?}`` -> ``202 {"job_id"}``; the task is sent on commit."""
    try:
        data = json.loads(request.body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return JsonResponse({"error": "a JSON object is required"}, status=400)
    text, model, voice = data.get("text"), data.get("model"), data.get("voice") or ""
    if not isinstance(text, str) or not text.strip() or not isinstance(model, str) or not model:
        return JsonResponse({"error": "text and model are required"}, status=400)
    with transaction.atomic():
        job = tts.request_speech(text, model, str(voice))
    return JsonResponse({"job_id": job.job_id, "status": job.status}, status=202)


@require_GET
def show_speech(request: HttpRequest, job_id: str) -> JsonResponse:
    job = SpeechJob.objects.filter(job_id=job_id).values().first()
    if job is None:
        return JsonResponse({"error": "no such job"}, status=404)
    return JsonResponse(job)


# The signature, not a CSRF token, is what authenticates the worker.
@csrf_exempt
@require_POST
def tts_webhook(request: HttpRequest) -> JsonResponse:
    """Verify, then apply once per ``webhook-id``; a repeat is acknowledged and ignored."""
    try:
        _verifier().verify(request.body, dict(request.headers), json_parse=False)
    except (WebhookVerificationError, ValueError):  # ValueError: undecodable body or header
        return JsonResponse({"error": "invalid signature"}, status=401)
    try:
        event = json.loads(request.body)
        job_id = str(event["job_id"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "not a TTS event"}, status=400)

    completed = event.get("type") == "tts.completed"
    try:
        # The delivery id and its effect commit together, or neither does.
        with transaction.atomic():
            WebhookDelivery.objects.create(webhook_id=request.headers["webhook-id"], job_id=job_id)
            SpeechJob.objects.filter(job_id=job_id).update(
                status="completed" if completed else "failed",
                audio_path=(event.get("audio") or {}).get("path") or "",
                error_code=(event.get("error") or {}).get("code") or "",
                finished_at=timezone.now(),
            )
    except IntegrityError:
        # A retry of a delivery we applied: answer 2xx so the worker stops sending it.
        return JsonResponse({"status": "duplicate"})
    return JsonResponse({"status": "processed"})
