"""The speech API (the worker's webhook is the client's view: ``tts_client.django``)."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from examples.django_app.speech import tts
from examples.django_app.speech.models import SpeechJob


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
