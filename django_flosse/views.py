"""Views of ``django_flosse.urls``: the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponseBase, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from prometheus_client.django import PrometheusDjangoView

from .access import may_read_metrics
from .conf import get_config

__all__ = ["metrics"]

# prometheus_client's own view: it reads PROMETHEUS_MULTIPROC_DIR and aggregates every
# worker's files in multiprocess mode, or serves the default registry otherwise.
_prometheus_view = PrometheusDjangoView.as_view()


@never_cache
def metrics(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
    """The metrics in Prometheus' text format, for allowed clients only (see ``access``)."""
    if not may_read_metrics(request, get_config()):
        return HttpResponseForbidden(
            "Metrics are not public. Allow this client with FLOSSE['METRICS_ALLOWED_NETWORKS'] "
            "or FLOSSE['METRICS_TOKEN'], or log in as staff.",
            content_type="text/plain",
        )
    response: HttpResponseBase = _prometheus_view(request)
    return response
