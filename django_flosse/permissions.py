"""Permission classes for ``@sse_stream(permission_classes=[...])`` (public since 0.2.0).

Every class must allow the request, or it gets ``403`` before anything streams.
``has_permission`` may be ``def`` or ``async def``. On the async path the user is loaded
with ``await request.auser()`` first, and a sync ``has_permission`` runs in a thread, so a
permission that queries the database never blocks the event loop.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

__all__ = ["AllowAny", "BaseSSEPermission", "IsAdminUser", "IsAuthenticated"]


class BaseSSEPermission:
    """Subclass this and override ``has_permission`` (``def`` or ``async def``).

    Example::

        class LoginRequired(BaseSSEPermission):
            def has_permission(self, request: HttpRequest) -> bool:
                return request.user.is_authenticated
    """

    def has_permission(self, request: HttpRequest) -> Any:
        return True


def _user(request: HttpRequest) -> Any:
    return getattr(request, "user", None)


class IsAuthenticated(BaseSSEPermission):
    """Allow authenticated users only."""

    def has_permission(self, request: HttpRequest) -> bool:
        user = _user(request)
        return bool(user and user.is_authenticated)


class IsAdminUser(BaseSSEPermission):
    """Allow staff users only."""

    def has_permission(self, request: HttpRequest) -> bool:
        user = _user(request)
        return bool(user and user.is_authenticated and user.is_staff)


class AllowAny(BaseSSEPermission):
    """Allow every request (the default when no classes are given)."""

    def has_permission(self, request: HttpRequest) -> bool:
        return True
