"""``path("flosse/", include("django_flosse.urls"))`` adds ``flosse:metrics``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "flosse"

urlpatterns = [
    path("metrics/", views.metrics, name="metrics"),
]
