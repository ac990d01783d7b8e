"""Permission classes for ``@sse_stream(permission_classes=[...])`` (public since 0.2.0).

Every class must allow the request, or it gets ``403`` before anything streams.
``has_permission`` may be ``def`` or ``async def``. On the async path the user is loaded
with ``await request.auser()`` first, and a sync ``has_permission`` runs in a thread, so a
permission that queries the database never blocks the event loop.

The decorator calls :func:`check` (``def`` views) or :func:`aprepare` (``async def`` views)
before a connection is opened: user loading and permission checks live here, with the
classes they run.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.http import HttpRequest

from .streaming._db import arelease_before_streaming, release_connections

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


PermissionClasses = Sequence[type[BaseSSEPermission] | BaseSSEPermission]
# Built-in classes that only read request.user: safe to call on the event loop.
_LOOP_SAFE = {cls.has_permission for cls in (AllowAny, IsAuthenticated, IsAdminUser)}


def _instances(permission_classes: PermissionClasses) -> list[BaseSSEPermission]:
    return [perm() if isinstance(perm, type) else perm for perm in permission_classes]


async def _result(awaitable: Any) -> Any:
    return await awaitable


def check(request: HttpRequest, permission_classes: PermissionClasses) -> bool:
    """The sync path: every class allows the request (``async def`` ones run to the end)."""
    for perm in _instances(permission_classes):
        allowed = perm.has_permission(request)
        if inspect.isawaitable(allowed):  # an async class on a sync view: run it to the end
            allowed = async_to_sync(_result)(allowed)
        if not allowed:
            return False
    return True


def _prepare_in_thread(request: HttpRequest, sync_checks: list[Any]) -> tuple[Any, bool]:
    """On the request's thread: load the user, run the sync permission classes (they may
    query the database), then let go of the connections they used (streaming/_db.py)."""
    user = getattr(request, "user", None)
    if user is not None:
        _ = user.is_authenticated  # evaluates Django's lazy user: a session and user query
    allowed = all(check(request) for check in sync_checks)
    release_connections()
    return user, allowed


def _has_session_key(request: HttpRequest) -> bool:
    """A session cookie came with the request: loading its user means queries."""
    return getattr(getattr(request, "session", None), "session_key", None) is not None


async def aprepare(request: HttpRequest, permission_classes: PermissionClasses) -> tuple[Any, bool]:
    """The async path's user and permission checks, with at most one thread hop.

    Nothing that may block runs on the event loop. When the user needs loading from a
    session or a sync permission class must run (either may query the database), they go
    to the request's thread together: one hop, which also releases the database
    connections. Otherwise (no session: an anonymous visitor, the common case of a public
    feed) ``await request.auser()`` answers without a hop, and a hop is spent on releasing
    connections only if one was opened for this request (``db.opened_for_this_request``).
    ``async def`` classes are awaited; the built-in classes, which only read the loaded
    user, run inline.
    """
    checks = [perm.has_permission for perm in _instances(permission_classes)]
    sync_checks = [
        check
        for check in checks
        if not inspect.iscoroutinefunction(check)
        and getattr(check, "__func__", None) not in _LOOP_SAFE
    ]
    auser = getattr(request, "auser", None)
    loads_user = inspect.iscoroutinefunction(auser)
    if sync_checks or (loads_user and _has_session_key(request)):
        user, allowed = await sync_to_async(_prepare_in_thread)(request, sync_checks)
    else:
        allowed = True
        if loads_user:
            assert auser is not None
            # Code that reads request.user later (the built-in classes, the view) gets the
            # loaded user instead of a lazy object that would query on the event loop.
            request.user = user = await auser()
        else:
            user = getattr(request, "user", None)
        await arelease_before_streaming()
    for check in checks:
        if not allowed:
            break
        if inspect.iscoroutinefunction(check):
            allowed = bool(await check(request))
        elif getattr(check, "__func__", None) in _LOOP_SAFE:
            allowed = bool(check(request))
    return user, allowed
