"""Database hygiene: a stream does not hold a database connection while it waits.

Django keeps a thread's connection open until the request finishes (and longer with
``CONN_MAX_AGE``). A request that streams for hours would hold it for hours: a thousand
streams, a thousand connections. So the stream lets go of its connections when streaming
starts (the view's permission checks and user lookup are done with them) and after a step
that took long (a poll loop sleeping between queries): a ``def`` view's generator thread
closes its own, an ``async def`` view's stream hops once to the request's thread, where
Django ran its async ORM calls. The next query reconnects. A connection inside
``transaction.atomic()`` is never closed, so wrap work that must keep its connection (a
cursor read across slow steps) in an atomic block.

Every moment of that policy has one entry point here: before streaming
(:func:`arelease_before_streaming` for ``async def`` views, :meth:`LentDatabases.release` on
a ``def`` view's generator thread), and when the producer is idle: an ``async def`` view's
connections are released once it has waited ``IDLE_STEP_SECONDS`` for its next item
(:func:`arelease_while_idle`, every wait, the first included, under ASGI; on WSGI's
private loop once it is at a yield again, after an item it waited that long for, as a
``def`` view's thread does); a ``def`` view's thread can
only act between steps, so it releases after a step that took that long
(:meth:`LentDatabases.release`): its first wait, after an item that came at once, keeps
the connection that item's query used.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.db.backends.signals import connection_created

__all__ = [
    "IDLE_STEP_SECONDS",
    "LentDatabases",
    "arelease_before_streaming",
    "arelease_while_idle",
    "async_views_release",
    "opened_for_this_request",
    "release_connections",
]

#: A producer that waits this long for its next item is idle (a poll loop's sleep).
IDLE_STEP_SECONDS = 0.05


def release_connections(connections: Iterable[Any] | None = None) -> None:
    """Close the given (default: this thread's) open connections outside transactions."""
    if connections is None:
        from django.db import connections as handler

        connections = handler.all(initialized_only=True)
    for connection in connections:
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close()


# The database connections opened in this context, with the thread each was opened on.
# Django runs an ASGI request's sync code (middleware, the user lookup, the async ORM) on a
# thread of its own, and asgiref copies context changes made there back to the awaiting
# task: so the event loop can tell, without a thread hop, whether the request opened a
# connection that a hop could release. Weak references to the connection wrappers, re-read
# each time (closed ones do not count, and are dropped as new ones come).
_opened: ContextVar[tuple[tuple[int, weakref.ref[Any]], ...]] = ContextVar(
    "flosse_db_opened", default=()
)


def _is_open(ref: weakref.ref[Any]) -> bool:
    wrapper = ref()
    return wrapper is not None and wrapper.connection is not None


def _connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    still_open = [
        (thread, ref) for thread, ref in _opened.get() if _is_open(ref) and ref() is not connection
    ]
    _opened.set((*still_open, (threading.get_ident(), weakref.ref(connection))))


connection_created.connect(_connection_created, dispatch_uid="django_flosse.db")


def opened_for_this_request() -> bool:
    """Is there a connection a hop to the request's thread could release?

    Called on the event loop: it looks for connections opened in this context, on another
    thread (the loop's own thread never holds one the request's thread could close), that
    are still open.
    """
    opened = _opened.get()
    if not opened:  # the common case, checked before every wait of a stream: no work
        return False
    loop_thread = threading.get_ident()
    return any(thread != loop_thread and _is_open(ref) for thread, ref in opened)


async def arelease_before_streaming() -> None:
    """An ``async def`` view's stream is about to start: hop to the request's thread to
    close the connections its middleware and checks opened, only if there are any."""
    if opened_for_this_request():
        await sync_to_async(release_connections)()


async def arelease_while_idle() -> None:
    """An ``async def`` view's producer has waited ``IDLE_STEP_SECONDS`` for its next item
    (a poll loop's sleep): close, on the request's thread, the connections its async ORM
    calls opened there, if any is open (no hop otherwise).

    The producer is suspended at an ``await`` meanwhile; an ORM call it awaits runs on that
    same thread, so the close comes before or after it, never during it."""
    if opened_for_this_request() and not _in_shared_thread_call():
        await sync_to_async(release_connections)()


def _in_shared_thread_call() -> bool:
    """Is the producer inside a call on asgiref's one shared thread right now?

    Outside Django's handler (an async view called directly, as tests with a
    ``RequestFactory`` do) nothing gives the request a thread of its own, and asgiref runs
    every thread-sensitive call on one shared thread. While one of the producer's calls is in
    flight there, asgiref refuses a second call from the same context ("would deadlock"), and
    a release would be pointless anyway: the producer is using its connection. The next idle
    wait releases it."""
    return bool(SyncToAsync.deadlock_context.get(False))


def async_views_release() -> bool:
    """Does an ``async def`` view's stream release connections after idle steps? Where a
    database is set up. (A ``def`` view's generator thread does its own: ``LentDatabases``.)"""
    return bool(settings.DATABASES)


class LentDatabases:
    """The view's database connections, lent to the thread that runs its generator.

    Django's connections are per thread. A sync generator is the rest of its view, so it
    should see what the view saw: the same connection, and so the same transaction (a test's,
    ``ATOMIC_REQUESTS``'s) and the same ``CONN_MAX_AGE`` reuse, instead of opening a new
    connection per stream. The lending thread waits for frames meanwhile; it closes the
    connections as usual when the request finishes.
    """

    def __init__(self) -> None:
        from django.db import connections

        self._lent = [connections[alias] for alias in connections]

    def borrow(self) -> None:
        from django.db import connections

        for connection in self._lent:
            connection.inc_thread_sharing()
            connections[connection.alias] = connection

    def give_back(self) -> None:
        for connection in self._lent:
            connection.dec_thread_sharing()

    def release(self) -> None:
        """Before streaming, and after an idle step, on the generator's thread."""
        release_connections(self._lent)
