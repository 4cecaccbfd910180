"""``path("tts/", include("tts_client.django.urls"))``: the webhook and the event stream."""

from __future__ import annotations

from django.urls import path

from tts_client.django import views

app_name = "tts_client"

urlpatterns = [
    path("webhook", views.webhook, name="webhook"),
    path("jobs/<str:job_id>/events", views.job_events, name="events"),
]
