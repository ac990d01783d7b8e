"""Permission classes: a sync one (it may touch the database) and an async one."""

from django_flosse import sse_stream
from django_flosse.permissions import BaseSSEPermission, IsAuthenticated


class CanViewReports(BaseSSEPermission):
    """Sync: ``has_perm`` may query the database.

    On an async view django-flosse runs it in a thread, so that query never blocks the
    event loop.
    """

    def has_permission(self, request):
        return request.user.has_perm("reports.view_report")


class CanViewReportsAsync(BaseSSEPermission):
    """Async: the same check with Django's async permission API, no thread needed.

    On the async path ``request.user`` is already loaded (with ``await request.auser()``)
    before any permission class runs.
    """

    async def has_permission(self, request):
        return await request.user.ahas_perm("reports.view_report")


@sse_stream(permission_classes=[IsAuthenticated, CanViewReports])
def report_feed(request):
    yield ("report", {"rows": 120})


@sse_stream(permission_classes=[IsAuthenticated, CanViewReportsAsync])
async def report_feed_async(request):
    yield ("report", {"rows": 120})
