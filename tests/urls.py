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

# Observability tests (issue 3).
urlpatterns += [
    path("obs/limited-async/", views.obs_limited_async),
    path("obs/limited-sync/", views.obs_limited_sync),
    path("obs/per-user/", views.obs_per_user),
    path("obs/forbidden/", views.obs_forbidden),
    path("obs/count/", views.obs_count),
    path("obs/async-count/", views.obs_async_count),
    path("obs/endless/", views.obs_endless),
    path("obs/async-endless/", views.obs_async_endless),
    path("obs/fails/", views.obs_fails),
    path("obs/async-fails/", views.obs_async_fails),
    path("obs/logs-inside/", views.obs_logs_inside),
    path("obs/async-logs-inside/", views.obs_async_logs_inside),
    path("obs/held/", views.obs_held),
    path("obs/pid-stream/", views.obs_pid_stream),
]

# Admin, connection history and dashboard tests (issue 4).
from django.contrib import admin  # noqa: E402

urlpatterns += [path("admin/", admin.site.urls)]
