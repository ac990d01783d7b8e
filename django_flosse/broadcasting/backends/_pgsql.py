"""The ``database`` backend's publish on PostgreSQL: one statement, so one round trip.

Through the ORM a publish is a transaction of six round trips (``BEGIN``, the topic's
``UPDATE`` and ``SELECT``, the ``INSERT``, ``pg_notify``, ``COMMIT``), and a publisher that
awaits each call waits for all six: it was the limit of benchmark F2 on PostgreSQL. Here the
same work is one data-modifying statement, which in autocommit is its own transaction:

1. ``heads``: an ``INSERT ... ON CONFLICT DO UPDATE`` adds each topic's number of events to
   its row (creating it at that number for a topic's first event) and returns the new
   position. It takes the row lock as the ORM's ``UPDATE`` did, before any position is
   handed out, and holds it until the statement commits: publishers of one topic are
   serialised and their positions commit in order. The topics come sorted, and PostgreSQL
   locks them in the order given, so two batches never wait for each other in a cycle.
2. ``stored``: the events, each at its topic's new position minus the number of its
   topic's events after it in the batch (call order within a topic).
3. the ``SELECT`` rings ``pg_notify`` once per topic, delivered when (if) it commits.

Table and column names come from the models' ``_meta``, quoted by the connection. Trimming
stays with the ORM (``database._trim``): it is due once in ``TRIM_EVERY`` events of a topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._messages import Draft

__all__ = ["Head", "store"]

#: A topic's (new position, number of events the statement gave it).
Head = tuple[int, int]


def store(connection: Any, drafts: Sequence[Draft], channel: str) -> dict[str, Head]:
    """Store ``drafts`` with one statement on ``connection`` (in its transaction if one is
    open, else in its own), notify ``channel`` once per topic; each topic's ``Head``."""
    ordered = sorted(drafts, key=lambda draft: draft.topic)  # stable: call order kept
    counts: dict[str, int] = {}
    for draft in ordered:
        counts[draft.topic] = counts.get(draft.topic, 0) + 1
    seen: dict[str, int] = {}
    after: list[int] = []  # per event, the events of its topic after it in the batch
    for draft in ordered:
        seen[draft.topic] = seen.get(draft.topic, 0) + 1
        after.append(counts[draft.topic] - seen[draft.topic])
    params = [
        list(counts),
        list(counts.values()),
        [draft.topic for draft in ordered],
        after,
        [draft.body.decode() for draft in ordered],
        [draft.published_at for draft in ordered],
        channel,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_statement(connection), params)
        rows = cursor.fetchall()
    return {topic: (int(position), counts[topic]) for topic, position in rows}


def _statement(connection: Any) -> str:
    from ...models import BroadcastMessage, BroadcastTopic

    quote = connection.ops.quote_name

    def column(model: Any, field: str) -> str:
        return str(quote(model._meta.get_field(field).column))

    topics, messages = quote(BroadcastTopic._meta.db_table), quote(BroadcastMessage._meta.db_table)
    topic, position = column(BroadcastTopic, "topic"), column(BroadcastTopic, "position")
    m_topic, m_position = column(BroadcastMessage, "topic"), column(BroadcastMessage, "position")
    body, published_at = column(BroadcastMessage, "body"), column(BroadcastMessage, "published_at")
    return f"""
        WITH heads AS (
            INSERT INTO {topics} AS topic_row ({topic}, {position})
            SELECT * FROM unnest(%s::text[], %s::bigint[])
            ON CONFLICT ({topic})
            DO UPDATE SET {position} = topic_row.{position} + EXCLUDED.{position}
            RETURNING topic_row.{topic} AS topic, topic_row.{position} AS head
        ), stored AS (
            INSERT INTO {messages} ({m_topic}, {m_position}, {body}, {published_at})
            SELECT event.topic, heads.head - event.after, event.body, event.published_at
            FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::double precision[])
                AS event(topic, after, body, published_at)
            JOIN heads ON heads.topic = event.topic
        )
        SELECT heads.topic, heads.head FROM heads, pg_notify(%s, heads.topic)
    """
