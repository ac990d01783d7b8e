"""The connection history in the admin: read-only, plus terminate and the live dashboard.

Rows are written by the processes that served the streams (``observing._history``), so the
admin never adds, edits or deletes them; retention is applied by the writers themselves
(``RETENTION_DAYS``, ``RETENTION_ROWS``) and by ``manage.py flosse_prune``. The one
write it offers is "Terminate selected connections", which needs its own permission
(``django_flosse.terminate_streamconnection``) and reaches the owning process, on any host,
through the database.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .models import StreamActivity, StreamConnection
from .observing.registry import registry
from .terminate import close_lost, request_stop

__all__ = ["OpenClosedListFilter", "StreamConnectionAdmin", "StreamListFilter", "UserListFilter"]

#: Users listed by the user filter: those with open connections, at most this many.
USER_FILTER_CHOICES = 50


class OpenClosedListFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("open", _("Open")), ("closed", _("Closed"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        state = self.value()
        if state not in ("open", "closed"):
            return queryset
        filtered: QuerySet[Any] = queryset.filter(closed_at__isnull=state == "open")
        return filtered


class StreamListFilter(admin.SimpleListFilter):
    """The stream names this project declares (its ``@sse_stream`` views) and the ones the
    dashboard's aggregates saw lately: Django's default filter would read every row of the
    history (``SELECT DISTINCT``) on every page."""

    title = _("stream")
    parameter_name = "stream"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        names = set(registry.declared())
        names.update(StreamActivity.objects.values_list("stream", flat=True).distinct())
        if self.value():
            names.add(str(self.value()))
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() is None:
            return queryset
        filtered: QuerySet[Any] = queryset.filter(stream=self.value())
        return filtered


class UserListFilter(admin.RelatedFieldListFilter):
    """Users with open connections (and the one filtered on), never the whole user table.

    Django's default lists every user to anyone who may view the history: a list of every
    username, and a page that grows with the user table. The user column links here
    (``?user__id__exact=<pk>``) and the search box finds usernames.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[Any]:
        choices = dict(
            StreamConnection.objects.filter(closed_at__isnull=True, user__isnull=False)
            .order_by()
            .values_list("user_id", "username")
            .distinct()[:USER_FILTER_CHOICES]
        )
        selected = self.lookup_val[-1] if self.lookup_val else None
        if selected and selected not in {str(pk) for pk in choices}:
            with contextlib.suppress(ValueError, ValidationError):  # the list says it is bad
                # Unordered: any row of the user names them (through the user_id index).
                rows = StreamConnection.objects.filter(user_id=selected).order_by()
                choices.update(rows.values_list("user_id", "username")[:1])
        return sorted(((pk, name or str(pk)) for pk, name in choices.items()), key=lambda c: c[1])

    def has_output(self) -> bool:
        return True  # "All" and "None" (anonymous) even when nobody signed in is connected


def _duration(delta: datetime.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[StreamConnection]
else:  # ModelAdmin is generic for the type checker only (no django-stubs-ext at run time)
    _ModelAdmin = admin.ModelAdmin


@admin.register(StreamConnection)
class StreamConnectionAdmin(_ModelAdmin):
    list_display = (
        "stream",
        "user_display",
        "client_ip",
        "process",
        "opened_at",
        "duration",
        "events_sent",
        "bytes_sent",
        "state",
    )
    # No date_hierarchy: with no date chosen it reads the dates of every row in the range
    # (over a second for 600,000 rows); the opened filter's choices cost no query.
    list_filter = (
        StreamListFilter,
        "close_reason",
        OpenClosedListFilter,
        ("opened_at", admin.DateFieldListFilter),
        ("user", UserListFilter),
    )
    search_fields = ("connection_id", "stream", "username", "client_ip", "path")
    actions = ("terminate",)
    list_per_page = 100
    # The history can hold millions of rows: skip the second, unfiltered COUNT(*).
    show_full_result_count = False

    # -- read-only -------------------------------------------------------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_terminate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.terminate_streamconnection")

    # -- columns ---------------------------------------------------------------------------
    @admin.display(description=_("user"), ordering="username")
    def user_display(self, obj: StreamConnection) -> str:
        # The username is kept on the row: it survives the user's deletion and needs no join.
        # It links to this user's connections (the user filter lists no one else).
        if obj.user_id is None:
            return obj.username or "-"
        return format_html('<a href="?user__id__exact={}">{}</a>', obj.user_id, obj.username or "-")

    @admin.display(description=_("duration"))
    def duration(self, obj: StreamConnection) -> str:
        return _duration((obj.closed_at or timezone.now()) - obj.opened_at)

    @admin.display(description=_("close reason"), ordering="close_reason")
    def state(self, obj: StreamConnection) -> str:
        return obj.close_reason or str(_("open"))

    # -- terminate -------------------------------------------------------------------------
    @admin.action(description=_("Terminate selected connections"), permissions=["terminate"])
    def terminate(self, request: HttpRequest, queryset: QuerySet[StreamConnection]) -> None:
        ids = list(queryset.filter(closed_at__isnull=True).values_list("connection_id", flat=True))
        count = request_stop(ids)
        self.message_user(
            request,
            ngettext(
                "Asked %(count)d open connection to terminate.",
                "Asked %(count)d open connections to terminate.",
                count,
            )
            % {"count": count},
            messages.SUCCESS if count else messages.WARNING,
        )

    # -- views -----------------------------------------------------------------------------
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse | HttpResponse:
        # Rows of a dead process are closed as "lost" by the writers of live processes; do
        # it here too, so the history is right even when nothing streams anywhere.
        if request.method == "GET" and self.has_view_permission(request):
            with contextlib.suppress(DatabaseError):  # logged; the list is still worth showing
                close_lost()
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        from .views import dashboard_urls

        return [*dashboard_urls(self), *super().get_urls()]
