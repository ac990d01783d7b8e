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
    path("class/", views.CountView.as_view()),
    path("pid/", views.pid_view),
    path("dashboard-cost/", views.dashboard_cost),
    path("async/resume/", views.async_resume),
]

# The decorator's tests.
urlpatterns += [
    path("bare/", views.bare_sync),
    path("called/", views.called_async),
    path("async/three/", views.async_three),
    path("async/staff/", views.async_staff),
    path("async/db-permission/", views.async_db_permission),
    path("sync/async-permission/", views.sync_with_async_permission),
    path("async/db-state/", views.async_db_state),
    path("sync/bad-yield/", views.sync_bad_yield),
    path("async-class/", views.AsyncCountView.as_view()),
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

# Reliability tests (issue 7).
urlpatterns += [
    path("rel/state/", views.rel_state),
    path("rel/endless/", views.rel_endless),
    path("rel/sync-endless/", views.rel_sync_endless),
    path("rel/max-duration/", views.rel_max_duration),
    path("rel/sync-max-duration/", views.rel_sync_max_duration),
    path("rel/flood/", views.rel_flood),
    path("rel/flood-timeout/", views.rel_flood_timeout),
    path("rel/sync-flood/", views.rel_sync_flood),
    path("rel/db-sync/", views.rel_db_sync),
    path("rel/db-async/", views.rel_db_async),
    path("rel/db-atomic/", views.rel_db_atomic),
    path("rel/db-async-closes/", views.rel_db_async_closes),
]

# Bad input and security tests (issue 7).
urlpatterns += [
    path("bad-input/sync/", views.bad_input_sync),
    path("bad-input/async/", views.bad_input_async),
    path("security/leaky/", views.sec_leaky),
    path("security/leaky-async/", views.sec_leaky_async),
    path("security/leaky-permission/", views.sec_leaky_permission),
    path("security/echo-last-id/", views.sec_echo_last_id),
    path("security/echo-last-id-async/", views.sec_echo_last_id_async),
]

# Broadcast (issue 11).
urlpatterns += [
    path("broadcast/async/<str:topics>/", views.broadcast_async),
    path("broadcast/sync/<str:topics>/", views.broadcast_sync),
    path("broadcast/publish/<str:topic>/", views.broadcast_publish),
]
urlpatterns += [path("broadcast/state/", views.broadcast_state)]
