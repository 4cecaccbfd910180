"""Routes: the speech API, and the client's webhook and job event stream under ``tts/``."""

from __future__ import annotations

from django.urls import include, path

from examples.django_app.speech import views

urlpatterns = [
    path("speech", views.create_speech),
    path("speech/<str:job_id>", views.show_speech),
    # POST tts/webhook (the worker's webhook), GET tts/jobs/<job_id>/events (server-sent events)
    path("tts/", include("tts_client.django.urls")),
]
