"""Rows of the connection history: a connection as a row, and the batched statements
that write them (run by the history writer, ``_history.py``, inside one transaction).

The registry keeps what the request said (headers are the client's to make up); a row must
fit its columns and the database's rules, or one bad value would fail a whole batch of
inserts again and again. So values are cut to their columns and rid of NUL, addresses are
validated, user keys converted to the key's type, and users deleted meanwhile forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, connections, models, router, transaction
from django.db.models import ForeignKey
from django.utils import timezone

from ..broadcasting._messages import MAX_TOPICS
from ..models import StreamActivity, StreamConnection
from ._activity import BucketRow
from .log import PERSISTENCE_DROPPED, get_logger
from .registry import Connection, client_address, current_process

__all__ = [
    "BATCH_SIZE",
    "OpenRow",
    "as_datetime",
    "close_rows",
    "db",
    "forget_deleted_users",
    "history_row",
    "insert_one",
    "insert_rows",
    "objects",
    "refresh_rows",
    "row_topics",
    "subscribed_processes",
    "update_each",
    "write_activity",
    "written",
]

#: Rows per INSERT/UPDATE statement (well under SQLite's variable limit).
BATCH_SIZE = 500

#: Fields an open row's refresh writes when they moved. ``topics`` is one of them: a view
#: calls ``subscribe()`` after its connection opened (and its row may be written already).
_COUNTER_FIELDS = ["events_sent", "bytes_sent", "last_event_at", "topics"]
#: The most ``StreamConnection.topics`` holds: every topic a subscription may name (128
#: characters each, one space between). A TextField has no limit of its own; this keeps a
#: row bounded whatever the registry holds.
TOPICS_MAX_LENGTH = MAX_TOPICS * 129 - 1
_CLOSE_FIELDS = [*_COUNTER_FIELDS, "closed_at", "close_reason", "error_id", "last_seen_at"]


def as_datetime(timestamp: float) -> datetime:
    """A registry timestamp as the column wants it (aware or naive, after ``USE_TZ``)."""
    moment = datetime.fromtimestamp(timestamp, tz=dt_timezone.utc)
    return moment if settings.USE_TZ else timezone.make_naive(moment)


def _text(value: str | None, max_length: int) -> str:
    # PostgreSQL refuses NUL in text, and a value longer than the column in varchar.
    return (value or "").replace("\x00", "")[:max_length]


def _user_field() -> ForeignKey[Any, Any]:
    return cast("ForeignKey[Any, Any]", StreamConnection._meta.get_field("user"))


def _user_pk(value: str | None) -> Any:
    """The registry keeps ``str(user.pk)``; the column wants the key's own type."""
    if value is None:
        return None
    try:
        return _user_field().target_field.to_python(value)
    except (ValidationError, TypeError, ValueError):
        return None


def row_topics(topics: Sequence[str]) -> str:
    """``topics`` as the column holds them: space-separated, whole topics only, at most
    :data:`TOPICS_MAX_LENGTH` characters (topics never contain a space)."""
    text = _text(" ".join(topics), TOPICS_MAX_LENGTH + 1)
    if len(text) > TOPICS_MAX_LENGTH:
        text = text.rsplit(" ", 1)[0]  # a cut topic goes; a whole one before a space stays
    return text


def written(connection: Connection) -> tuple[int, int, float | None, tuple[str, ...]]:
    """What a refresh compares with the row: read once (the stream may move meanwhile)."""
    return (
        connection.events_sent,
        connection.bytes_sent,
        connection.last_event_at,
        connection.topics,
    )


def history_row(connection: Connection, now: datetime) -> StreamConnection:
    """The row of ``connection`` as it is now (closed already, or still open)."""
    closed_at = connection.closed_at  # read first: a reason is set before closed_at is
    last_event_at = connection.last_event_at
    return StreamConnection(
        connection_id=_text(connection.id, 32),
        stream=_text(connection.stream, 200),
        path=_text(connection.path, 500),
        route=_text(connection.route, 500),
        user_id=_user_pk(connection.user_id),
        username=_text(connection.username, 150),
        client_ip=client_address(connection.client_ip),  # a bad one must not block a batch
        user_agent=_text(connection.user_agent, 512),
        process=_text(connection.process or current_process(), 255),
        opened_at=as_datetime(connection.opened_at),
        closed_at=None if closed_at is None else as_datetime(closed_at),
        last_seen_at=now if closed_at is None else as_datetime(closed_at),
        events_sent=connection.events_sent,
        bytes_sent=connection.bytes_sent,
        last_event_at=None if last_event_at is None else as_datetime(last_event_at),
        close_reason=(connection.close_reason or "") if closed_at is not None else "",
        last_event_id=_text(connection.last_event_id, 512),
        error_id=_text(connection.error_id, 16),
        topics=row_topics(connection.topics),
    )


def forget_deleted_users(objs: list[StreamConnection]) -> None:
    """Drop references to users deleted since they connected.

    Foreign keys are checked at commit (Django makes them deferred), where one bad row would
    fail the whole batch again and again; checking first costs one query per flush.
    """
    user_ids = {obj.user_id for obj in objs if obj.user_id is not None}
    if not user_ids:
        return
    user_model = _user_field().related_model
    manager = user_model._default_manager.using(router.db_for_read(user_model))
    existing = set(manager.filter(pk__in=user_ids).values_list("pk", flat=True))
    for obj in objs:
        if obj.user_id is not None and obj.user_id not in existing:
            obj.user_id = None


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


@dataclass(frozen=True, slots=True)
class OpenRow:
    """An open connection whose row exists, with the counters last written to it (one per
    open connection: no ``__dict__``)."""

    connection: Connection
    pk: Any
    written: tuple[int, int, float | None, tuple[str, ...]]


def insert_rows(
    pending: dict[str, Connection], now: datetime
) -> list[tuple[Connection, Any, bool]]:
    """Insert the rows; returns (connection, pk, row written closed) per connection."""
    rows = [(c, history_row(c, now)) for c in pending.values()]
    objs = [obj for _, obj in rows]
    forget_deleted_users(objs)
    try:
        with transaction.atomic(using=db()):
            objects().bulk_create(objs, batch_size=BATCH_SIZE)
    except (IntegrityError, DataError):
        for obj in objs:
            obj.pk = None
            insert_one(obj)
    missing = [obj.connection_id for obj in objs if obj.pk is None]
    pks = _pks(missing)  # backends that return no ids, and rows inserted by a lost commit
    result = []
    for connection, obj in rows:
        pk = obj.pk if obj.pk is not None else pks.get(obj.connection_id)
        if pk is not None:
            result.append((connection, pk, obj.closed_at is not None))
    return result


def insert_one(obj: StreamConnection) -> None:
    for attempt in range(2):
        try:
            with transaction.atomic(using=db()):
                obj.save(force_insert=True, using=db())
            return
        except (IntegrityError, DataError) as exc:
            obj.pk = None
            if attempt == 0 and obj.user_id is not None:
                obj.user_id = None  # the user was deleted meanwhile: keep the row
                continue
            if objects().filter(connection_id=obj.connection_id).exists():
                return  # already written (a commit whose answer was lost)
            get_logger().error(
                PERSISTENCE_DROPPED, connection_id=obj.connection_id, error=repr(exc)
            )
            return


def close_rows(
    finished: dict[str, Connection],
    known: dict[str, OpenRow],
    inserted: list[tuple[Connection, Any, bool]],
) -> None:
    written_closed = {c.id for c, _, was_closed in inserted if was_closed}
    pks = {cid: row.pk for cid, row in known.items()}
    pks.update((c.id, pk) for c, pk, _ in inserted)
    todo = [c for cid, c in finished.items() if cid not in written_closed]
    pks.update(_pks([c.id for c in todo if c.id not in pks]))
    objs = []
    for connection in todo:
        pk = pks.get(connection.id)
        if pk is None:
            continue  # its insert was dropped
        obj = history_row(connection, timezone.now())
        obj.pk = pk
        objs.append(obj)
    if objs:
        update_each(objs, _CLOSE_FIELDS, db())


def refresh_rows(
    known: dict[str, OpenRow], finished: dict[str, Connection], me: str, now: datetime
) -> dict[str, OpenRow]:
    """Write moved counters (and topics); mark every open row of this process as seen now."""
    moved: dict[str, OpenRow] = {}
    objs = []
    for connection_id, row in known.items():
        counters = written(row.connection)
        if connection_id in finished or counters == row.written:
            continue
        moved[connection_id] = OpenRow(row.connection, row.pk, counters)
        obj = StreamConnection(
            pk=row.pk,
            events_sent=counters[0],
            bytes_sent=counters[1],
            last_event_at=None if counters[2] is None else as_datetime(counters[2]),
            topics=row_topics(counters[3]),
        )
        objs.append(obj)
    if objs:
        update_each(objs, _COUNTER_FIELDS, db())
    if any(connection_id not in finished for connection_id in known):
        objects().filter(process=me, closed_at__isnull=True).update(last_seen_at=now)
    return moved


def write_activity(rows: list[BucketRow], process: str) -> None:
    """Store this process's changed buckets (``observing._activity``): one upsert."""
    StreamActivity.objects.using(db()).bulk_create(
        [
            StreamActivity(
                process=process,
                stream=_text(row.stream, 200),
                bucket=row.bucket,
                opened=row.opened,
                cancelled=row.cancelled,
                errors=row.errors,
                active=row.active,
                events_total=row.events_total,
                bytes_total=row.bytes_total,
            )
            for row in rows
        ],
        batch_size=BATCH_SIZE,
        update_conflicts=True,
        unique_fields=["process", "stream", "bucket"],
        update_fields=["opened", "cancelled", "errors", "active", "events_total", "bytes_total"],
    )


def subscribed_processes(exclude: str, limit: int = 10) -> list[str]:
    """Up to ``limit`` processes other than ``exclude`` with an open subscribed connection
    (one query on the ``(closed_at, process)`` index)."""
    return list(
        objects()
        .filter(closed_at__isnull=True)
        .exclude(process=exclude)
        .exclude(topics="")
        .order_by("process")
        .values_list("process", flat=True)
        .distinct()[:limit]
    )


def db() -> str:
    return router.db_for_write(StreamConnection)


def objects() -> Any:
    return StreamConnection.objects.using(db())


def _pks(connection_ids: list[str]) -> dict[str, Any]:
    pks: dict[str, Any] = {}
    for start in range(0, len(connection_ids), BATCH_SIZE):
        batch = connection_ids[start : start + BATCH_SIZE]
        pks.update(objects().filter(connection_id__in=batch).values_list("connection_id", "pk"))
    return pks
