"""Exceptions raised by django-flosse (the names are public since 0.2.0)."""

from __future__ import annotations

__all__ = ["SSEClientDisconnected", "SSEPermissionDenied", "SSEYieldError"]


class SSEClientDisconnected(Exception):
    """The client closed the connection.

    Kept for compatibility with 0.2.0. django-flosse does not raise it inside views: an
    ``async def`` view sees :class:`asyncio.CancelledError` at its current ``await`` and a
    ``def`` view sees :class:`GeneratorExit` at its current ``yield``, which is what Python's
    own cleanup (``finally``, ``with``) already understands.
    """


class SSEPermissionDenied(Exception):
    """A permission class refused the request (kept for compatibility with 0.2.0)."""


class SSEYieldError(ValueError):
    """A view yielded a value that cannot become an SSE event.

    The message names the type or the key that was wrong, so the fix is obvious from the log.
    """
