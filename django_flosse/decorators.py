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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseForbidden

from . import reasons
from .bridge import ThreadedSource
from .clients import connection_for
from .conf import Config, get_config
from .db import opened_for_this_request, release_connections
from .lifecycle import Stream
from .permissions import AllowAny, BaseSSEPermission, IsAdminUser, IsAuthenticated
from .registry import registry
from .response import SSEResponse

__all__ = ["sse_stream"]

ViewT = TypeVar("ViewT", bound=Callable[..., Any])
P = ParamSpec("P")
PermissionClasses = Sequence[type[BaseSSEPermission] | BaseSSEPermission]

_GZIP_MIDDLEWARE = "django.middleware.gzip.GZipMiddleware"
_ACCEPTS_GZIP = re.compile(r"\bgzip\b")
# Built-in classes that only read request.user: safe to call on the event loop.
_LOOP_SAFE = {cls.has_permission for cls in (AllowAny, IsAuthenticated, IsAdminUser)}


class _FromSettings:
    def __repr__(self) -> str:
        return "<from the FLOSSE setting>"


FROM_SETTINGS: Any = _FromSettings()


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


def _instances(permission_classes: PermissionClasses) -> list[BaseSSEPermission]:
    return [perm() if isinstance(perm, type) else perm for perm in permission_classes]


async def _result(awaitable: Any) -> Any:
    return await awaitable


def _check_permissions(request: HttpRequest, permission_classes: PermissionClasses) -> bool:
    for perm in _instances(permission_classes):
        allowed = perm.has_permission(request)
        if inspect.isawaitable(allowed):  # an async class on a sync view: run it to the end
            allowed = async_to_sync(_result)(allowed)
        if not allowed:
            return False
    return True


def _prepare_in_thread(request: HttpRequest, sync_checks: list[Any]) -> tuple[Any, bool]:
    """On the request's thread: load the user, run the sync permission classes (they may
    query the database), then let go of the connections they used (see db.py)."""
    user = getattr(request, "user", None)
    if user is not None:
        _ = user.is_authenticated  # evaluates Django's lazy user: a session and user query
    allowed = all(check(request) for check in sync_checks)
    release_connections()
    return user, allowed


def _has_session_key(request: HttpRequest) -> bool:
    """A session cookie came with the request: loading its user means queries."""
    return getattr(getattr(request, "session", None), "session_key", None) is not None


async def _aprepare(
    request: HttpRequest, permission_classes: PermissionClasses
) -> tuple[Any, bool]:
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
        if opened_for_this_request():
            await sync_to_async(release_connections)()
    for check in checks:
        if not allowed:
            break
        if inspect.iscoroutinefunction(check):
            allowed = bool(await check(request))
        elif getattr(check, "__func__", None) in _LOOP_SAFE:
            allowed = bool(check(request))
    return user, allowed


def _wants_gzip(request: HttpRequest) -> bool:
    accept = getattr(request, "META", {}).get("HTTP_ACCEPT_ENCODING", "")
    return (
        isinstance(accept, str)
        and bool(_ACCEPTS_GZIP.search(accept))
        and _GZIP_MIDDLEWARE in getattr(settings, "MIDDLEWARE", ())
    )


def _refusal(reason: str, config: Config) -> HttpResponse:
    if reason == "forbidden":
        return HttpResponseForbidden()
    status = 503 if reason == "stream_limit" else 429  # the stream is full / this user is
    response = HttpResponse(status=status)
    response["Retry-After"] = str(config.limit_retry_after)
    return response


def _respond(
    request: HttpRequest,
    user: Any,
    make_items: Callable[[], Any],
    options: _Options,
) -> HttpResponseBase:
    """Register the connection (or refuse it) and answer with its stream."""
    config = get_config()
    connection = connection_for(request, options.name, user, config)
    rejected = registry.open(
        connection,
        max_connections=_pick(options.max_connections, config.max_connections),
        max_connections_per_user=_pick(
            options.max_connections_per_user, config.max_connections_per_user
        ),
    )
    if rejected:
        return _refusal(rejected, config)
    try:
        items = make_items()
        encode = config.encode
        is_async = hasattr(items, "__aiter__")
        if is_async:
            source, item_encoder = items, encode
        elif hasattr(items, "__iter__"):
            source = ThreadedSource(
                iter(items), encode, config.sync_read_ahead, lend_databases=True
            )
            item_encoder = None
        else:
            raise TypeError(
                f"the @sse_stream view {options.name} returned {type(items).__name__}; it must "
                "be a generator (use yield) or return an iterable"
            )
    except BaseException:
        registry.close(connection, reasons.ERROR)
        raise
    gzip = _wants_gzip(request)
    stream = Stream(
        source,
        connection=connection,
        encode=item_encoder,
        heartbeat=_pick(options.heartbeat, config.heartbeat),
        max_duration=_pick(options.max_duration, config.max_duration),
        send_timeout=_pick(options.send_timeout, config.send_timeout),
        retry=options.retry,
        gzip=gzip,
        release_db_when_idle=is_async and bool(settings.DATABASES),
    )
    return SSEResponse(stream, is_async=is_async, gzip=gzip)


def _pick(option: Any, default: Any) -> Any:
    return default if option is FROM_SETTINGS else option


def _is_method(func: Callable[..., Any]) -> bool:
    params = list(inspect.signature(func).parameters)
    return bool(params) and params[0] == "self"


@dataclass(frozen=True)
class _Options:
    name: str
    retry: int | None
    heartbeat: Any
    permission_classes: PermissionClasses
    max_connections: Any
    max_connections_per_user: Any
    max_duration: Any
    send_timeout: Any


def _sync_user(request: HttpRequest) -> Any:
    return getattr(request, "user", None)


def _decorate(view_func: ViewT, **kwargs: Any) -> ViewT:
    if inspect.iscoroutinefunction(view_func):
        raise TypeError(
            f"@sse_stream needs a generator: {view_func.__qualname__} is an async def without "
            "yield (a coroutine function)"
        )
    name = kwargs.pop("name") or f"{view_func.__module__}.{view_func.__qualname__}"
    options = _Options(name=name, **kwargs)
    request_index = 1 if _is_method(view_func) else 0

    if inspect.isasyncgenfunction(view_func):

        @functools.wraps(view_func)
        async def async_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
            request = args[request_index]
            user, allowed = await _aprepare(request, options.permission_classes)
            if not allowed:
                registry.reject(options.name, "forbidden")
                return _refusal("forbidden", get_config())
            return _respond(request, user, lambda: view_func(*args, **kwargs), options)

        return async_view  # type: ignore[return-value]

    @functools.wraps(view_func)
    def sync_view(*args: Any, **kwargs: Any) -> HttpResponseBase:
        request = args[request_index]
        if options.permission_classes and not _check_permissions(
            request, options.permission_classes
        ):
            registry.reject(options.name, "forbidden")
            return _refusal("forbidden", get_config())
        return _respond(request, _sync_user(request), lambda: view_func(*args, **kwargs), options)

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
