"""Broadcast: one event, published from anywhere, to every stream subscribed to its topic.

    broadcast(topic, data, *, event=None)          # sync, from any process
    await abroadcast(topic, data, *, event=None)   # from async code
    subscribe(request, *topics)                    # in an @sse_stream view

    _publish       broadcast(), abroadcast(): validate, encode once, publish (on commit)
    _subscription  subscribe(): join the fan-out, replay from the history, then live
    _messages      drafts and messages: validation, the encoded body, the reset event
    _ids           resume ids: a position per topic, opaque to clients
    _checks        deploy checks W009, W010: what the chosen backend promises under faults
    backends/      base (the contract, the fan-out), database, redis, memory

Modules starting with ``_`` are internal: their names may change in any release.
"""

from __future__ import annotations

from ._messages import RESET_EVENT
from ._publish import abroadcast, broadcast
from ._subscription import Subscription, subscribe

__all__ = ["RESET_EVENT", "Subscription", "abroadcast", "broadcast", "subscribe"]
