"""``broadcast()`` and ``abroadcast()``: publish one event to every subscriber of a topic.

Everything is validated by the call itself, inside ``atomic()`` too, so a bad call raises
where it was made and nothing is published. Inside a transaction the event is published
when it commits (Django's ``on_commit``) and not at all if it rolls back: a page never
hears of a row it then cannot read.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ..conf import get_config
from ..events import json_dumps_for
from ..observing.log import BROADCAST_PUBLISHED, get_logger
from ..observing.metrics import BROADCAST_PUBLISHED_TOTAL
from ._messages import Draft, make_draft
from .backends import get_backend
from .backends.base import Backend

__all__ = ["abroadcast", "broadcast"]


def _draft(topic: str, data: Any, event: str | None) -> Draft:
    config = get_config()
    return make_draft(
        topic,
        data,
        event,
        dumps=json_dumps_for(config.json_encoder),
        max_bytes=config.broadcast_max_bytes,
        published_at=time.time(),
    )


def _alias() -> str | None:
    """The database whose transaction a publish waits for (None: no database at all)."""
    alias = get_config().broadcast_database
    if alias in connections.settings:
        return alias
    return DEFAULT_DB_ALIAS if DEFAULT_DB_ALIAS in connections.settings else None


def _publish(backend: Backend, draft: Draft, independent: bool = False) -> None:
    backend.publish([draft], independent=independent)
    _published(draft)


def _published(draft: Draft) -> None:
    BROADCAST_PUBLISHED_TOTAL.inc()
    get_logger().debug(BROADCAST_PUBLISHED, topic=draft.topic, bytes=len(draft.body))


def broadcast(topic: str, data: Any, *, event: str | None = None, on_commit: bool = True) -> None:
    """Send one event to every stream subscribed to ``topic``, in every process.

    ``data`` and ``event`` mean what they mean in a yield (``str`` as is, anything else
    JSON). Inside ``transaction.atomic()`` the event is published when the transaction
    commits, and not at all if it rolls back; ``on_commit=False`` publishes at once,
    independently of the surrounding transaction. Raises ``ValueError`` for a bad topic,
    data that cannot be serialised, the reserved event name ``flosse-reset``, or an event
    larger than ``FLOSSE["BROADCAST_MAX_BYTES"]``; and the backend's error if it cannot
    publish (nothing is published then).
    """
    draft = _draft(topic, data, event)
    backend = get_backend()
    alias = _alias()
    in_transaction = alias is not None and transaction.get_connection(alias).in_atomic_block
    if not in_transaction:
        _publish(backend, draft)
    elif on_commit:
        transaction.on_commit(lambda: _publish(backend, draft), using=alias)
    else:
        _publish(backend, draft, independent=True)


async def abroadcast(
    topic: str, data: Any, *, event: str | None = None, on_commit: bool = True
) -> None:
    """:func:`broadcast` for async code (the same rules; it does not block the loop)."""
    draft = _draft(topic, data, event)
    backend = get_backend()
    alias = _alias()
    # Async code has no transaction of its own; one can only be open if this loop runs
    # inside sync code that opened it (async_to_sync within atomic()).
    if on_commit and alias is not None and transaction.get_connection(alias).in_atomic_block:
        transaction.on_commit(lambda: _publish(backend, draft), using=alias)
        return
    await backend.apublish([draft])
    _published(draft)
