from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("stream/clock/", views.clock, name="clock"),
    path("stream/progress/", views.progress, name="progress"),
    path("flosse/", include("django_flosse.urls")),
    path("admin/", admin.site.urls),
]
