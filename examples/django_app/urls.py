"""Routes: the speech API and the worker's webhook."""

from __future__ import annotations

from django.urls import path

from examples.django_app.speech import views

urlpatterns = [
    path("speech", views.create_speech),
    path("speech/<str:job_id>", views.show_speech),
    path("webhooks/tts", views.tts_webhook),
]
