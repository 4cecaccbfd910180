"""The webhook view and the job event stream."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tts_client import sse
from tts_client.django.client import get_client
from tts_client.django.models import WebhookEvent
from tts_client.django.signals import webhook_received
from tts_client.webhooks import WebhookVerificationError, verify_webhook


def _secret() -> str:
    secret = getattr(settings, "TTS_WEBHOOK_SECRET", "")
    if not secret:
        raise ImproperlyConfigured("TTS_WEBHOOK_SECRET is required: unsigned webhooks are refused")
    return str(secret)


# The signature, not a CSRF token, is what authenticates the worker.
@csrf_exempt
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    """Verify, record the ``webhook-id`` and send :data:`webhook_received`, in one transaction.

    401 for a forged, altered or unsigned body; ``200 {"status": "duplicate"}`` for an id seen
    before (nothing is applied again); ``200 {"status": "processed"}`` otherwise.
    """
    try:
        event = verify_webhook(_secret(), request.body, request.headers)
    except WebhookVerificationError:
        return JsonResponse({"error": "invalid signature"}, status=401)
    with transaction.atomic():
        try:
            # A savepoint of its own: a repeat fails here, not a receiver's own constraint.
            with transaction.atomic():
                WebhookEvent.objects.create(
                    webhook_id=event.webhook_id, job_id=event.job_id, type=event.type
                )
        except IntegrityError:
            # A retry of a delivery already applied: 2xx, so the worker stops sending it.
            return JsonResponse({"status": "duplicate"})
        webhook_received.send(sender=WebhookEvent, event=event)
    return JsonResponse({"status": "processed"})


@require_GET
def job_events(request: HttpRequest, job_id: str) -> StreamingHttpResponse:
    """The job's updates as server-sent events (:mod:`tts_client.sse`), until it ends.

    Anyone who knows the job id can follow it: a random id is hard to guess, but wrap this view
    with your own access check (``login_required``, ownership) where that matters.
    """
    response = StreamingHttpResponse(
        sse.job_events(get_client(), job_id), content_type=sse.CONTENT_TYPE
    )
    for name, value in sse.HEADERS.items():
        response[name] = value
    return response
