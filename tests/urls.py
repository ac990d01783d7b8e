from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("flosse/", include("django_flosse.urls")),
    path("sync/count/", views.sync_count),
    path("async/count/", views.async_count),
    path("sync/endless/", views.sync_endless),
    path("async/endless/", views.async_endless),
    path("async/swallows/", views.async_swallows_cancel),
    path("async/idle/", views.async_idle),
    path("sync/idle/", views.sync_idle),
    path("retry/", views.with_retry),
    path("sync/fails/", views.sync_fails),
    path("async/fails/", views.async_fails),
    path("async/bad-yield/", views.async_bad_yield),
    path("async/private/", views.async_private),
    path("sync/private/", views.sync_private),
    path("resume/", views.resume),
    path("class-based/", views.CountView.as_view()),
    path("pid/", views.pid_view),
    path("async/resume/", views.async_resume),
]
