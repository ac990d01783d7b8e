"""Storing events for the ``database`` backend (any thread: a view, the publisher thread).

``store`` is one publish in a transaction of its own (or a savepoint of the caller's);
``insert`` the same inside a transaction the caller opened, or on PostgreSQL alone in
autocommit. On PostgreSQL both are one statement (``_pgsql``); on other databases the ORM
increments the topic's row, reads the position back and inserts the event, per event (see
``database`` for why the row comes first). The trims follow, when a topic's position
passes a multiple of ``TRIM_EVERY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F

from ...conf import Config
from ...observing.log import BROADCAST_BACKEND_ERROR, get_logger
from .._messages import Draft
from . import _pgsql
from ._pglisten import CHANNEL

__all__ = ["TRIM_EVERY", "insert", "models", "store", "store_and_close"]

#: A publish that brings its topic to a multiple of this trims the history.
TRIM_EVERY = 100


def models() -> tuple[Any, Any]:
    from ...models import BroadcastMessage, BroadcastTopic

    return BroadcastTopic, BroadcastMessage


def store(alias: str, drafts: Sequence[Draft], config: Config) -> None:
    connection = connections[alias]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        try:
            insert(alias, drafts, config)  # one statement: its own transaction
        except DatabaseError:
            # What atomic() does when its rollback fails: a broken connection is dropped,
            # so that the next call opens a new one (a script or a worker has no request
            # cycle to do it, and would fail on the dead one for ever).
            if connection.connection is not None and not connection.is_usable():
                connection.close()
            raise
        return
    with transaction.atomic(using=alias):
        insert(alias, drafts, config)


def insert(alias: str, drafts: Sequence[Draft], config: Config) -> None:
    """Store ``drafts``: on PostgreSQL with one statement (see ``_pgsql``), in the caller's
    transaction if one is open, else in its own; on another database in the transaction the
    caller opened, topic after topic in sorted order, each topic's drafts in call order. Two
    transactions of several topics each (the publisher's group commits) thus lock their
    topic rows in one order, and the trims come after every row lock is taken: they never
    wait for each other in a cycle."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        heads = _pgsql.store(connection, drafts, CHANNEL)
        _trim_due(alias, drafts, heads, config, committed=not connection.in_atomic_block)
        return
    topic_model, message_model = models()
    topics = topic_model.objects.using(alias)
    trims: dict[str, tuple[int, float]] = {}
    for draft in sorted(drafts, key=lambda draft: draft.topic):
        position = _next_position(alias, topics, draft.topic)
        message_model.objects.using(alias).create(
            topic=draft.topic,
            position=position,
            body=draft.body.decode(),
            published_at=draft.published_at,
        )
        if position % TRIM_EVERY == 0:
            trims[draft.topic] = (position, draft.published_at)
    for topic, (position, now) in trims.items():
        _trim(alias, topic, position, now, config)


def _trim_due(
    alias: str,
    drafts: Sequence[Draft],
    heads: dict[str, _pgsql.Head],
    config: Config,
    *,
    committed: bool,
) -> None:
    """The trims of the topics whose position passed a multiple of ``TRIM_EVERY`` (at most
    one per topic: the last multiple). After the commit (``committed``), a failed trim is
    logged, not raised: the events are published, and the caller must not publish them
    again; the topic's next multiple trims what this one left."""
    for topic, (head, count) in heads.items():
        upto = head // TRIM_EVERY * TRIM_EVERY
        if upto <= head - count:
            continue
        ours = [draft for draft in drafts if draft.topic == topic]
        now = ours[upto - (head - count) - 1].published_at  # the draft at position upto
        if not committed:
            _trim(alias, topic, upto, now, config)
            continue
        try:
            _trim(alias, topic, upto, now, config)
        except DatabaseError as exc:
            get_logger().warning(BROADCAST_BACKEND_ERROR, part="trim", error=str(exc))


def _next_position(alias: str, topics: Any, topic: str) -> int:
    """Increment ``topic``'s position and return it (see the module docstring: UPDATE
    first, so that the position is read under the lock that orders its commit)."""
    for _attempt in range(3):
        if topics.filter(topic=topic).update(position=F("position") + 1):
            return int(topics.filter(topic=topic).values_list("position", flat=True).get())
        try:
            with transaction.atomic(using=alias):  # a savepoint: PostgreSQL goes on after it
                topics.create(topic=topic, position=1)
            return 1
        except IntegrityError:  # another publisher created it first: increment it then
            continue
    raise RuntimeError(f"could not create the broadcast topic row {topic!r}")


def _trim(alias: str, topic: str, position: int, now: float, config: Config) -> None:
    _, message_model = models()
    messages = message_model.objects.using(alias)
    messages.filter(topic=topic, position__lte=position - config.broadcast_history).delete()
    messages.filter(published_at__lt=now - config.broadcast_history_seconds).delete()


def store_and_close(alias: str, drafts: Sequence[Draft], config: Config) -> None:
    """:func:`store` from a thread that has no other use for its connection."""
    try:
        store(alias, drafts, config)
    finally:
        connections[alias].close()
