"""``@sse_stream``: turn a generator view into a Server-Sent Events endpoint.

This module only decorates. The sync or async path is chosen once, at decoration time,
from the kind of function. Each request is checked against the permission classes
(``permissions.check`` / ``permissions.aprepare``: ``403`` before anything streams), then
handed to ``streaming._lifecycle.open_stream``, which owns the connection from there on.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from django.http import HttpRequest, HttpResponseBase

from . import permissions, reasons
from .conf import FROM_SETTINGS, get_config
from .observing.registry import registry
from .permissions import PermissionClasses
from .streaming._lifecycle import StreamOptions, open_stream
from .streaming._response import refusal

__all__ = ["sse_stream"]

ViewT = TypeVar("ViewT", bound=Callable[..., Any])
P = ParamSpec("P")


def _validate(retry: Any, permission_classes: Any, **options: Any) -> None:
    if retry is not None and (type(retry) is not int or retry < 0):
        raise TypeError(
            f"@sse_stream(retry=...) must be a non-negative int (milliseconds); got {retry!r}"
        )
    for option, value in options.items():
        if value is FROM_SETTINGS or value is None:
            continue
        if option.startswith("max_connections"):
            if type(value) is not int or value < 1:
                raise TypeError(
                    f"@sse_stream({option}=...) must be an int >= 1 or None; got {value!r}"
                )
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise TypeError(
                f"@sse_stream({option}=...) must be a positive number of seconds or None; "
                f"got {value!r}"
            )
    if isinstance(permission_classes, (str, type)) or not isinstance(permission_classes, Sequence):
        raise TypeError(
            "@sse_stream(permission_classes=...) must be a list of permission classes; "
            f"got {permission_classes!r}"
        )
    for perm in permission_classes:
        if not hasattr(perm, "has_permission"):
            raise TypeError(f"{perm!r} is not a permission class: it has no has_permission()")


def _is_method(func: Callable[..., Any]) -> bool:
    params = list(inspect.signature(func).parameters)
    return bool(params) and params[0] == "self"


def _sync_user(request: HttpRequest) -> Any:
    return getattr(request, "user", None)


def _forbidden(stream: str) -> HttpResponseBase:
    registry.reject(stream, reasons.FORBIDDEN)
    return refusal(reasons.FORBIDDEN, get_config())


def _decorate(view_func: ViewT, **kwargs: Any) -> ViewT:
    if inspect.iscoroutinefunction(view_func):
        raise TypeError(
            f"@sse_stream needs a generator: {view_func.__qualname__} is an async def without "
            "yield (a coroutine function)"
        )
    name = kwargs.pop("name") or f"{view_func.__module__}.{view_func.__qualname__}"
    permission_classes = kwargs.pop("permission_classes")
    options = StreamOptions(name=name, **kwargs)
    registry.declare(name)  # its metrics exist at zero from the first scrape
    request_index = 1 if _is_method(view_func) else 0

    if inspect.isasyncgenfunction(view_func):

        @functools.wraps(view_func)
        async def async_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
            request = args[request_index]
            user, allowed = await permissions.aprepare(request, permission_classes)
            if not allowed:
                return _forbidden(options.name)
            return open_stream(request, user, lambda: view_func(*args, **kwargs), options)

        return async_view  # type: ignore[return-value]

    @functools.wraps(view_func)
    def sync_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
        request = args[request_index]
        if permission_classes and not permissions.check(request, permission_classes):
            return _forbidden(options.name)
        return open_stream(
            request, _sync_user(request), lambda: view_func(*args, **kwargs), options
        )

    return sync_view  # type: ignore[return-value]


class StreamDecorator(Protocol):
    """What ``@sse_stream(...)`` returns: it decorates a sync or an async generator view."""

    @overload
    def __call__(
        self, view_func: Callable[P, AsyncIterator[Any]], /
    ) -> Callable[P, Coroutine[Any, Any, HttpResponseBase]]: ...

    @overload
    def __call__(
        self, view_func: Callable[P, Iterable[Any]], /
    ) -> Callable[P, HttpResponseBase]: ...


# A decorated view is a view: it returns a response (awaitable for async generators), so
# `path("...", view)` and `view(request).status_code` type-check in projects using mypy.
@overload
def sse_stream(
    view_func: Callable[P, AsyncIterator[Any]], /
) -> Callable[P, Coroutine[Any, Any, HttpResponseBase]]: ...


@overload
def sse_stream(view_func: Callable[P, Iterable[Any]], /) -> Callable[P, HttpResponseBase]: ...


@overload
def sse_stream(
    view_func: None = None,
    /,
    *,
    name: str | None = None,
    retry: int | None = None,
    heartbeat: float | None = ...,
    permission_classes: PermissionClasses = (),
    max_connections: int | None = ...,
    max_connections_per_user: int | None = ...,
    max_duration: float | None = ...,
    send_timeout: float | None = ...,
) -> StreamDecorator: ...


def sse_stream(
    view_func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: int | None = None,
    heartbeat: Any = FROM_SETTINGS,
    permission_classes: PermissionClasses = (),
    max_connections: Any = FROM_SETTINGS,
    max_connections_per_user: Any = FROM_SETTINGS,
    max_duration: Any = FROM_SETTINGS,
    send_timeout: Any = FROM_SETTINGS,
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
    max_connections
        Open connections this stream accepts per process; more get ``503`` with
        ``Retry-After`` (default ``FLOSSE["MAX_CONNECTIONS"]``; ``None``: no limit).
    max_connections_per_user
        Open connections one authenticated user may hold on this stream per process; more
        get ``429`` with ``Retry-After`` (default ``FLOSSE["MAX_CONNECTIONS_PER_USER"]``).
    max_duration
        Seconds after which the stream ends with reason ``timeout`` and a final frame whose
        ``retry:`` hint is jittered, so long streams drain during deploys (default
        ``FLOSSE["MAX_DURATION"]``, none). The limit itself is jittered down by up to 10%.
    send_timeout
        Seconds a chunk may wait for a client that stopped reading before the stream ends
        with reason ``timeout`` (default ``FLOSSE["SEND_TIMEOUT"]``, 60; ASGI servers).
    """
    _validate(
        retry,
        permission_classes,
        heartbeat=heartbeat,
        max_connections=max_connections,
        max_connections_per_user=max_connections_per_user,
        max_duration=max_duration,
        send_timeout=send_timeout,
    )
    options = {
        "name": name,
        "retry": retry,
        "heartbeat": heartbeat,
        "permission_classes": tuple(permission_classes),
        "max_connections": max_connections,
        "max_connections_per_user": max_connections_per_user,
        "max_duration": max_duration,
        "send_timeout": send_timeout,
    }
    if view_func is not None:
        return _decorate(view_func, **options)
    return functools.partial(_decorate, **options)
