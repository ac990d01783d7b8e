"""``@sse_stream``: turn a generator view into a Server-Sent Events endpoint.

The sync or async path is chosen once, at decoration time, from the kind of function. Each
request is then checked against the permission classes (``403`` before anything streams)
and answered with an :class:`~django_flosse.response.SSEResponse` whose stream runs the
view's generator event by event on whichever server is serving it.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, HttpResponseForbidden

from .bridge import ThreadedSource
from .conf import get_config
from .formatters import make_encoder
from .lifecycle import Stream
from .permissions import AllowAny, BaseSSEPermission, IsAdminUser, IsAuthenticated
from .response import SSEResponse

__all__ = ["sse_stream"]

ViewT = TypeVar("ViewT", bound=Callable[..., Any])
PermissionClasses = Sequence[type[BaseSSEPermission] | BaseSSEPermission]

_GZIP_MIDDLEWARE = "django.middleware.gzip.GZipMiddleware"
_ACCEPTS_GZIP = re.compile(r"\bgzip\b")
# Built-in classes that only read request.user: safe to call on the event loop.
_LOOP_SAFE = {cls.has_permission for cls in (AllowAny, IsAuthenticated, IsAdminUser)}


class _FromSettings:
    def __repr__(self) -> str:
        return "<from FLOSSE['HEARTBEAT']>"


FROM_SETTINGS: Any = _FromSettings()


def _validate(retry: Any, heartbeat: Any, permission_classes: Any) -> None:
    if retry is not None and (type(retry) is not int or retry < 0):
        raise TypeError(f"@sse_stream(retry=...) must be a non-negative int (milliseconds); got {retry!r}")
    if heartbeat is not FROM_SETTINGS and heartbeat is not None and (
        isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)) or heartbeat <= 0
    ):
        raise TypeError(f"@sse_stream(heartbeat=...) must be a positive number of seconds or None; got {heartbeat!r}")
    if isinstance(permission_classes, (str, type)) or not isinstance(permission_classes, Sequence):
        raise TypeError(
            "@sse_stream(permission_classes=...) must be a list of permission classes; "
            f"got {permission_classes!r}"
        )
    for perm in permission_classes:
        if not hasattr(perm, "has_permission"):
            raise TypeError(f"{perm!r} is not a permission class: it has no has_permission()")


def _instances(permission_classes: PermissionClasses) -> list[BaseSSEPermission]:
    return [perm() if isinstance(perm, type) else perm for perm in permission_classes]


def _check_permissions(request: HttpRequest, permission_classes: PermissionClasses) -> bool:
    for perm in _instances(permission_classes):
        allowed = perm.has_permission(request)
        if inspect.isawaitable(allowed):
            raise TypeError(
                f"{type(perm).__name__}.has_permission is async, but the view is sync: "
                "make it a def, or make the view an async def"
            )
        if not allowed:
            return False
    return True


async def _acheck_permissions(request: HttpRequest, permission_classes: PermissionClasses) -> bool:
    auser = getattr(request, "auser", None)
    if inspect.iscoroutinefunction(auser):
        # Load the user without a blocking ORM call on the event loop.
        request.user = await auser()
    for perm in _instances(permission_classes):
        check = perm.has_permission
        if inspect.iscoroutinefunction(check):
            allowed = await check(request)
        elif getattr(check, "__func__", None) in _LOOP_SAFE:
            allowed = check(request)
        else:  # a sync class may query the database: not on the event loop
            allowed = await sync_to_async(check)(request)
        if not allowed:
            return False
    return True


def _wants_gzip(request: HttpRequest) -> bool:
    accept = getattr(request, "META", {}).get("HTTP_ACCEPT_ENCODING", "")
    return (
        isinstance(accept, str)
        and bool(_ACCEPTS_GZIP.search(accept))
        and _GZIP_MIDDLEWARE in getattr(settings, "MIDDLEWARE", ())
    )


def _respond(
    request: HttpRequest,
    items: Any,
    *,
    name: str,
    retry: int | None,
    heartbeat: Any,
) -> SSEResponse:
    config = get_config()
    encode = make_encoder(config.dumps)
    gzip = _wants_gzip(request)
    is_async = hasattr(items, "__aiter__")
    if is_async:
        source, item_encoder = items, encode
    elif hasattr(items, "__iter__"):
        source, item_encoder = ThreadedSource(iter(items), encode, config.sync_read_ahead), None
    else:
        raise TypeError(
            f"the @sse_stream view {name} returned {type(items).__name__}; it must be a "
            "generator (use yield) or return an iterable"
        )
    stream = Stream(
        source,
        name=name,
        encode=item_encoder,
        heartbeat=config.heartbeat if heartbeat is FROM_SETTINGS else heartbeat,
        retry=retry,
        gzip=gzip,
    )
    return SSEResponse(stream, is_async=is_async, gzip=gzip)


def _is_method(func: Callable[..., Any]) -> bool:
    params = list(inspect.signature(func).parameters)
    return bool(params) and params[0] == "self"


def _decorate(
    view_func: ViewT,
    *,
    name: str | None,
    retry: int | None,
    heartbeat: Any,
    permission_classes: PermissionClasses,
) -> ViewT:
    if inspect.iscoroutinefunction(view_func):
        raise TypeError(
            f"@sse_stream needs a generator: {view_func.__qualname__} is an async def without "
            "yield (a coroutine function)"
        )
    stream_name = name or f"{view_func.__module__}.{view_func.__qualname__}"
    request_index = 1 if _is_method(view_func) else 0
    options = {"name": stream_name, "retry": retry, "heartbeat": heartbeat}

    if inspect.isasyncgenfunction(view_func):

        @functools.wraps(view_func)
        async def async_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
            request = args[request_index]
            if permission_classes and not await _acheck_permissions(request, permission_classes):
                return HttpResponseForbidden()
            return _respond(request, view_func(*args, **kwargs), **options)

        return async_view  # type: ignore[return-value]

    @functools.wraps(view_func)
    def sync_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
        request = args[request_index]
        if permission_classes and not _check_permissions(request, permission_classes):
            return HttpResponseForbidden()
        return _respond(request, view_func(*args, **kwargs), **options)

    return sync_view  # type: ignore[return-value]


@overload
def sse_stream(view_func: ViewT, /) -> ViewT: ...


@overload
def sse_stream(
    view_func: None = None,
    /,
    *,
    name: str | None = None,
    retry: int | None = None,
    heartbeat: float | None = ...,
    permission_classes: PermissionClasses = (),
) -> Callable[[ViewT], ViewT]: ...


def sse_stream(
    view_func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: int | None = None,
    heartbeat: Any = FROM_SETTINGS,
    permission_classes: PermissionClasses = (),
) -> Any:
    """Turn a generator view (``def`` or ``async def``) into a Server-Sent Events endpoint.

    Use it bare (``@sse_stream``) or with options (``@sse_stream(...)``):

    name
        The stream's name in metrics, logs and the admin (default: ``module.qualname``).
    retry
        Milliseconds the browser waits before reconnecting; sent first as a ``retry:`` frame.
    heartbeat
        Seconds of producer idleness before a ``: keep-alive`` comment (default
        ``FLOSSE["HEARTBEAT"]``, 15); ``None`` disables it.
    permission_classes
        :class:`~django_flosse.permissions.BaseSSEPermission` classes; every one must allow
        the request, else it gets ``403`` before anything streams.
    """
    _validate(retry, heartbeat, permission_classes)
    options = {
        "name": name,
        "retry": retry,
        "heartbeat": heartbeat,
        "permission_classes": tuple(permission_classes),
    }
    if view_func is not None:
        return _decorate(view_func, **options)
    return functools.partial(_decorate, **options)
