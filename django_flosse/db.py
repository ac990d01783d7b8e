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

Also here, the one write the ORM has no cheap form for: :func:`update_each`, used by the
connection history writer to update many rows with values of their own.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import Any, cast

from django.db import models
from django.db.backends.signals import connection_created

__all__ = ["IDLE_STEP_SECONDS", "opened_for_this_request", "release_connections", "update_each"]

#: A step of a sync generator at least this long counts as idle waiting (a poll loop).
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
    loop_thread = threading.get_ident()
    return any(thread != loop_thread and _is_open(ref) for thread, ref in _opened.get())


def update_each(objs: Sequence[models.Model], fields: Sequence[str], using: str) -> None:
    """Write ``fields`` of every object to its row: one ``UPDATE ... WHERE pk = %s`` run
    with ``executemany``.

    Why not ``QuerySet.bulk_update()``: it builds one ``CASE WHEN pk = ... THEN ...`` per
    field over the whole batch, which costs Python an expression per row and field, and
    the database a scan of the ``CASE`` for every row it updates (quadratic in the batch).
    Closing a thousand connections at once that way took about a second of CPU;
    ``executemany`` of one prepared statement is linear (psycopg pipelines it).
    """
    if not objs:
        return
    from django.db import connections

    connection = connections[using]
    meta = objs[0]._meta
    columns = [cast("models.Field[Any, Any]", meta.get_field(name)) for name in fields]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(str(field.column))} = %s" for field in columns)
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"
    params = [
        [field.get_db_prep_save(getattr(obj, field.attname), connection) for field in columns]
        + [meta.pk.get_db_prep_value(obj.pk, connection)]
        for obj in objs
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
