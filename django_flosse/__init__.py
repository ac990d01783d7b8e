"""django-flosse: Server-Sent Events for Django, one decorator, observable.

Quick start::

    from django_flosse import sse_stream

    @sse_stream
    async def live_updates(request):
        yield ("update", {"count": 1})
"""

from __future__ import annotations

from .broadcasting import abroadcast, broadcast, subscribe
from .decorators import sse_stream
from .events import SSEEvent
from .exceptions import SSEClientDisconnected, SSEPermissionDenied, SSEYieldError
from .formatters import to_sse

__all__ = [
    "SSEClientDisconnected",
    "SSEEvent",
    "SSEPermissionDenied",
    "SSEYieldError",
    "__version__",
    "abroadcast",
    "broadcast",
    "sse_stream",
    "subscribe",
    "to_sse",
]

__version__ = "0.3.0.dev0"
