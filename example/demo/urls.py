"""URLs of the demo: three pages, the streams they open, django-flosse's metrics, the admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("htmx/", views.htmx_page, name="htmx"),
    path("messages/", views.post_message, name="post_message"),
    path("stream/feed/", views.feed, name="feed"),
    path("stream/progress/", views.progress, name="progress"),
    path("stream/resume/", views.resume, name="resume"),
    path("stream/fail/", views.fail, name="fail"),
    path("stream/htmx/", views.htmx_stream, name="htmx_stream"),
    path("broadcast/", views.broadcast_page, name="broadcast"),
    path("broadcast/publish/", views.publish, name="publish"),
    path("stream/news/", views.news, name="news"),
    path("stream/alerts/", views.alerts, name="alerts"),
    # flosse:metrics, Prometheus' text format (loopback and staff only by default).
    path("flosse/", include("django_flosse.urls")),
    # The admin, with the live dashboard at admin:django_flosse_dashboard.
    path("admin/", admin.site.urls),
]

# Static files (in DEBUG) are served by Django's staticfiles handler, which asgi.py and
# wsgi.py wrap around the application.
