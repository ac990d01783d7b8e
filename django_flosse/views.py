"""Every HTTP view of the app: the Prometheus metrics, and the admin's live dashboard.

Metrics (``flosse:metrics``, from ``django_flosse.urls``) are never public by default:
allowed are requests from loopback that did not come through a proxy, from a network in
``FLOSSE["METRICS_ALLOWED_NETWORKS"]``, with ``Authorization: Bearer <FLOSSE["METRICS_TOKEN"]>``,
or from a logged-in staff user.

The dashboard (``StreamConnectionAdmin.get_urls()`` adds :func:`dashboard_urls`): a page,
the SSE feed that keeps it current (itself an ``@sse_stream`` view, whose data comes from
``observing._dashboard``), and terminate.

* ``AdminSite.admin_view`` wraps sync views only, so the outer feed view is sync (login
  redirect, permission check) and calls the async stream view through ``async_to_sync``.
  The response it returns then streams natively under ASGI, where a disconnect cancels the
  generator at once. Its queries run on one thread of its own through ``sync_to_async``:
  never on the event loop, and its database connection is closed when the feed ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from prometheus_client.django import PrometheusDjangoView

from . import reasons
from .conf import Config, get_config
from .decorators import sse_stream
from .observing._dashboard import (
    DASHBOARD_STREAM,
    MIN_POLL_GAP,
    POLL_INTERVAL,
    TOPICS_INTERVAL,
    TOPICS_WINDOW,
    WINDOW,
    Feed,
    watcher,
)
from .permissions import BaseSSEPermission

__all__ = ["dashboard_urls", "may_read_metrics", "metrics"]


# --------------------------------------------------------------------------- metrics
# Headers a reverse proxy adds: a request carrying one came through a proxy, and its
# REMOTE_ADDR (often 127.0.0.1) says nothing about the real client.
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def _remote_address(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return None


def _has_token(request: HttpRequest, token: str | None) -> bool:
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Bytes: compare_digest refuses non-ASCII str, and a header is the client's to make up.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def may_read_metrics(request: HttpRequest, config: Config) -> bool:
    if _has_token(request, config.metrics_token):
        return True
    address = _remote_address(request)
    if address is not None:
        proxied = any(header in request.META for header in _PROXY_HEADERS)
        if address.is_loopback and not proxied:
            return True
        if any(address in network for network in config.metrics_allowed_networks):
            return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


# prometheus_client's own view: it reads PROMETHEUS_MULTIPROC_DIR and aggregates every
# worker's files in multiprocess mode, or serves the default registry otherwise.
_prometheus_view = PrometheusDjangoView.as_view()


@never_cache
def metrics(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
    """The metrics in Prometheus' text format, for allowed clients only (module docstring)."""
    if not may_read_metrics(request, get_config()):
        return HttpResponseForbidden(
            "Metrics are not public. Allow this client with FLOSSE['METRICS_ALLOWED_NETWORKS'] "
            "or FLOSSE['METRICS_TOKEN'], or log in as staff.",
            content_type="text/plain",
        )
    response: HttpResponseBase = _prometheus_view(request)
    return response


# --------------------------------------------------------------------------- admin dashboard
VIEW_PERMISSIONS = ("django_flosse.view_streamconnection", "django_flosse.change_streamconnection")
TERMINATE_PERMISSION = "django_flosse.terminate_streamconnection"
#: Connection ids accepted by terminate (``uuid4().hex``, but any short token is fine).
_CONNECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_TERMINATE = 1000


def _can_view(user: Any) -> bool:
    """Staff with the model's view permission (change implies view, as in the admin)."""
    return bool(
        user is not None
        and user.is_active
        and user.is_staff
        and any(user.has_perm(perm) for perm in VIEW_PERMISSIONS)
    )


class _CanViewConnections(BaseSSEPermission):
    """Second line of defence: the stream view checks again if routed without the wrapper."""

    async def has_permission(self, request: HttpRequest) -> bool:
        return await sync_to_async(_can_view)(getattr(request, "user", None))


@sse_stream(name=DASHBOARD_STREAM, permission_classes=[_CanViewConnections])
async def _feed(request: HttpRequest) -> AsyncIterator[Any]:
    """``snapshot`` once, then ``update`` whenever something changed. The broadcast topics
    panel rides along as a ``topics`` key: in the snapshot, then in an update at most every
    ``TOPICS_INTERVAL`` when it changed."""
    # Shared: every viewer of this process reads one state, computed once per interval.
    feed = Feed(get_config().dashboard_top, shared=True)
    # One thread of its own for the queries: off the event loop on every server, and its
    # database connection is closed when the feed ends (below).
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flosse-dashboard")
    wake = asyncio.Event()
    token = watcher.listen(asyncio.get_running_loop(), wake)

    def run(method: Callable[[], dict[str, Any] | None]) -> Any:
        return sync_to_async(method, thread_sensitive=False, executor=executor)()

    try:
        snapshot = await run(feed.snapshot)
        snapshot["topics"] = await run(feed.topics)
        yield ("snapshot", snapshot)
        last = topics_at = time.monotonic()
        while True:
            timeout = last + POLL_INTERVAL - time.monotonic()
            if timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
            await asyncio.sleep(max(0.0, last + MIN_POLL_GAP - time.monotonic()))
            wake.clear()
            last = time.monotonic()
            update = await run(feed.poll)
            if last - topics_at >= TOPICS_INTERVAL:
                topics_at = last
                topics = await run(feed.topics)
                if topics is not None:
                    update = {**(update or feed.unchanged()), "topics": topics}
            if update is not None:
                yield ("update", update)
    finally:
        watcher.unlisten(token)
        executor.submit(connections.close_all)  # runs before the thread exits
        executor.shutdown(wait=False)


# --------------------------------------------------------------------------- admin views
def _messages() -> dict[str, str]:
    """The script's words, translated here and handed over with ``json_script``."""
    return {
        "live": _("Live"),
        "reconnecting": _("Connection lost, reconnecting…"),
        "stopped": _("The server ended the live feed."),
        "failed": _("The live feed is unavailable (signed out?). Retrying…"),
        "showing": _("showing %(shown)s of %(total)s"),
        "terminate": _("Terminate"),
        "terminating": _("Terminating…"),
        "confirm": _("Terminate this connection? Its client gets a final “terminated” event."),
        "terminate_failed": _("Terminate failed (HTTP %(status)s)."),
        "active": _("active"),
        "opened": _("opened"),
        "cancelled": _("cancelled"),
        "errors": _("errors"),
        "events_per_s": _("events/s"),
        "bytes_per_s": _("bytes/s"),
        "ago": _("%(time)s ago"),
        "never": _("never"),
        "no_topics": _("No topic has subscribers or recent events."),
        "more_topics": _("and %(count)s more topics"),
        "partial": _("(counts are partial: too many distinct subscriptions to read)"),
        "not_available": _("n/a"),
        "lag_none": _("no live delivery in this process recently"),
        "lag": _(
            "p50 %(p50)s, p99 %(p99)s, max %(max)s over %(samples)s live deliveries of this process"
        ),
        "unshared": _(
            "The broadcast backend is “memory”, but streams subscribed to topics are open in "
            "%(count)s processes (%(processes)s): each process hears only its own "
            "broadcasts, so events are lost. Use the “database” or “redis” backend."
        ),
    }


def dashboard_urls(model_admin: Any) -> list[URLPattern]:
    """The dashboard's URLs, for ``StreamConnectionAdmin.get_urls()`` to prepend.

    Names (in the admin site's namespace): ``django_flosse_dashboard`` (the page),
    ``django_flosse_dashboard_stream`` (its SSE feed) and ``django_flosse_dashboard_terminate``
    (POST). ``admin_view`` sends anonymous users to the admin login, adds CSRF protection,
    and marks the responses uncacheable.
    """
    site = model_admin.admin_site
    opts = model_admin.model._meta

    def page(request: HttpRequest) -> HttpResponse:
        if not _can_view(request.user):
            return HttpResponseForbidden()
        request.current_app = site.name
        context = {
            **site.each_context(request),
            "title": _("Live dashboard"),
            "opts": opts,
            "can_terminate": request.user.has_perm(TERMINATE_PERMISSION),
            "window_minutes": WINDOW // 60,
            "topics_minutes": TOPICS_WINDOW // 60,
            "top": get_config().dashboard_top,
            "messages_js": _messages(),
        }
        return TemplateResponse(request, "django_flosse/dashboard.html", context)

    def feed(request: HttpRequest) -> HttpResponseBase:
        # Checked before anything streams: the stream is never opened for them.
        if not _can_view(request.user):
            return HttpResponseForbidden()
        # @sse_stream turned the async generator into a coroutine view returning a response.
        stream_view = cast("Callable[[HttpRequest], Awaitable[HttpResponseBase]]", _feed)
        return async_to_sync(stream_view)(request)

    def terminate(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not (_can_view(request.user) and request.user.has_perm(TERMINATE_PERMISSION)):
            return HttpResponseForbidden()
        ids = request.POST.getlist("connection_id")
        if not ids or len(ids) > MAX_TERMINATE or not all(map(_CONNECTION_ID.fullmatch, ids)):
            return HttpResponseBadRequest("connection_id: 1 to 1000 connection ids")
        # Imported here: terminate uses the models, and django_flosse.urls (the metrics
        # view, this module) must load in a project that has not installed the app.
        from .terminate import request_stop

        stopped = request_stop(ids, reason=reasons.TERMINATED)
        return JsonResponse({"requested": len(ids), "stopped": stopped})

    return [
        path("dashboard/", site.admin_view(page), name="django_flosse_dashboard"),
        path("dashboard/stream/", site.admin_view(feed), name="django_flosse_dashboard_stream"),
        path(
            "dashboard/terminate/",
            site.admin_view(terminate),
            name="django_flosse_dashboard_terminate",
        ),
    ]
