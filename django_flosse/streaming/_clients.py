"""What django-flosse records about the client of a connection.

Kept apart from the registry (which knows nothing of Django requests) and tolerant of
request doubles: 0.2.0's own tests called views with mocks shaped like a request.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

from django.http import HttpRequest

from ..conf import Config
from ..observing.registry import Connection, client_address, current_process

__all__ = [
    "attach_to_request",
    "client_ip",
    "connection_for",
    "connection_of",
    "last_event_id",
    "new_connection_id",
]

# Where the request keeps its stream's connection, for ``subscribe(request, ...)``. An
# attribute costs 768 bytes of Python objects per connection on uvicorn (one attribute
# beyond those ``ASGIRequest``'s instances share turns its compact dict into a full one). A
# weak map from request to connection saved them, but not in the server's RSS (seven
# alternated pairs of the benchmark's workload C), and a map outlives the request's cycle:
# the attribute stays (docs/performance.md, "Third round").
_CONNECTION_ATTRIBUTE = "_flosse_connection"

#: Longest Last-Event-ID / user agent kept (a header is the client's to make up).
MAX_HEADER_LENGTH = 512
#: Longest path kept (the history's column; the server decodes it from the request line).
MAX_PATH_LENGTH = 500
#: Longest username kept (Django's own ``User``; a custom user model may allow more).
MAX_USERNAME_LENGTH = 150


def _meta(request: HttpRequest, key: str) -> str:
    meta = getattr(request, "META", None)
    value = meta.get(key, "") if isinstance(meta, dict) else ""
    return value if isinstance(value, str) else ""


def client_ip(request: HttpRequest, config: Config) -> str | None:
    """The client address: from the trusted proxy header when configured, else REMOTE_ADDR;
    ``None`` unless it parses as an IP (registry, logs, history and dashboard show no other
    text there)."""
    if not config.record_client_ip:
        return None
    if config.client_ip_header:
        forwarded = _meta(request, config.client_ip_header).split(",")[0].strip()
        if forwarded:
            return client_address(forwarded)
    return client_address(_meta(request, "REMOTE_ADDR"))


def last_event_id(request: HttpRequest) -> str:
    """The header, or the ``lastEventId`` query parameter of clients that cannot set it."""
    header = _meta(request, "HTTP_LAST_EVENT_ID")
    if header:
        return header
    meta = getattr(request, "META", None)
    query_string = meta.get("QUERY_STRING") if isinstance(meta, dict) else None
    if (
        isinstance(query_string, str)
        and "lastEventId" not in query_string
        and "%" not in query_string
    ):
        # Not in the query (only percent-encoding could hide it): ``request.GET`` would parse
        # it into a QueryDict that the request keeps for the connection's whole life.
        return ""
    query: Any = getattr(request, "GET", None)
    value = query.get("lastEventId", "") if hasattr(query, "get") else ""
    return value if isinstance(value, str) else ""


def new_connection_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` gave, at a quarter of its cost (no ``UUID``
    object per connection, no version bits: all 128 bits are random)."""
    return secrets.token_hex(16)


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", "")
    return route if isinstance(route, str) else ""


def connection_for(request: HttpRequest, stream: str, user: Any, config: Config) -> Connection:
    """A new connection record for ``request`` (``user`` already loaded, or ``None``)."""
    user_id = username = None
    if user is not None and getattr(user, "is_authenticated", False) is True:
        user_id = str(user.pk)
        username = str(user.get_username())[:MAX_USERNAME_LENGTH]
    path = getattr(request, "path", "")
    return Connection(
        id=new_connection_id(),
        stream=stream,
        path=path[:MAX_PATH_LENGTH] if isinstance(path, str) else "",
        route=_route(request)[:MAX_PATH_LENGTH],
        user_id=user_id,
        username=username or "",
        client_ip=client_ip(request, config),
        user_agent=_meta(request, "HTTP_USER_AGENT")[:MAX_HEADER_LENGTH],
        last_event_id=last_event_id(request)[:MAX_HEADER_LENGTH],
        process=current_process(),
    )


def attach_to_request(request: HttpRequest, connection: Connection) -> None:
    """Let code that gets the request (``subscribe()``) find its stream's connection."""
    with contextlib.suppress(AttributeError):  # a request double that takes no attributes
        setattr(request, _CONNECTION_ATTRIBUTE, connection)


def connection_of(request: HttpRequest) -> Connection | None:
    """The connection of the stream ``request`` opened, if it opened one."""
    connection = getattr(request, _CONNECTION_ATTRIBUTE, None)
    return connection if isinstance(connection, Connection) else None
