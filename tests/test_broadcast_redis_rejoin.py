"""The ``redis`` backend around a Redis restart: two bugs found by the soak's Redis cycles.

- A client back right after Redis restarted empty, before the process's reader had seen the
  new epoch (it was idle, or still in its backoff after the outage): the subscription took
  the cached epoch for its ids, so the client's old id parsed, the new (empty) stream could
  not place it, and the client got ``flosse-reset`` with an id of the **old** life; the
  reader then found the new epoch and ended the stream, and the client's next resume got a
  second reset (1-9% of 1,000 subscribers per restart in the soak). The promise is one
  reset per restart: a join that asks Redis now reads the epoch in the same round trip, and
  a subscription whose backend changed epoch while it joined resets with the new one.
- A subscriber replaying history when Redis died ended with an ``error`` event (its next
  page's read failed) and its client reconnected into the outage, again and again. It now
  waits, as a live subscriber does, with its stream's heartbeats.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_flosse import broadcast, subscribe
from django_flosse.broadcasting.backends import get_backend
from django_flosse.broadcasting.backends.base import PAGE_SIZE
from tests.support.redis import RedisServer, broadcast_after_restart, own_redis_server
from tests.support.subscribing import MEMORY, Reader, datas, joined, request, wait_for


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with (
        own_redis_server() as server,
        override_settings(
            FLOSSE={**MEMORY, "BROADCAST_BACKEND": "redis", "BROADCAST_REDIS_URL": server.url}
        ),
    ):
        yield server


def test_one_reset_for_a_client_back_before_the_reader_saw_the_restart(
    own_redis: RedisServer,
) -> None:
    backend = get_backend()
    first = Reader(subscribe(request(), "t"))
    joined(backend, "t")
    broadcast("t", "old life")
    (event,) = first.take(1)
    first.stop()
    # The reader idle, without topics (its read of ``t`` ended): it will not look at Redis
    # before the next join wakes it.
    wait_for(lambda: not backend._positions and backend._reading is None, "an idle reader")  # type: ignore[attr-defined]
    old_tag = backend.tag
    own_redis.kill()
    own_redis.start()  # empty: a new life
    back = Reader(subscribe(request(event.id), "t"))
    (reset,) = back.take(1)
    back.stop()
    again = Reader(subscribe(request(reset.id), "t"))
    joined(backend, "t")
    broadcast_after_restart("t", "live")
    got = again.take_until("live")
    again.stop()
    assert datas([reset]) == ["<reset>"]
    assert not reset.id.startswith(old_tag + "."), "the reset names the dead life"
    assert datas(got) == ["live"], "a second flosse-reset for the same restart"


def test_a_stream_replaying_when_redis_dies_waits_then_ends_cleanly(own_redis: RedisServer) -> None:
    """A subscriber replaying more than a page of history when Redis dies: the next page's
    read fails. The stream waits (a live stream in the same outage stays open with its
    heartbeats; so does this one) and is not ended with an error; when Redis comes back
    empty, what it replayed is gone: it ends cleanly, and its client's resume gets one
    ``flosse-reset`` (the test above)."""
    backend = get_backend()
    zero = backend.format_position(backend.zero)
    start = f"{backend.tag}.{ids_of_t(backend)}.{zero}"
    for i in range(PAGE_SIZE + 1):
        broadcast("t", f"e{i}")
    subscription = subscribe(request(start), "t")
    events = iter(subscription)
    assert next(events).data == "e0"  # the first page is read
    own_redis.kill()
    outcome: list[BaseException | None] = []

    def rest() -> None:
        try:
            for _ in range(PAGE_SIZE + 1):  # the first page's rest, then the next page's read
                next(events)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=rest, daemon=True)
    thread.start()
    # Set where a read or join that failed waits for Redis (the reader sets it too).
    wait_for(lambda: not backend._epoch_checked, "a failed read")  # type: ignore[attr-defined]
    assert thread.is_alive() and not outcome, f"the stream ended while Redis was down: {outcome}"
    own_redis.start()  # empty: a new life
    thread.join(30)
    subscription.close()
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], StopIteration), outcome


def ids_of_t(backend: Any) -> str:
    """The digest part of the ids of a subscription to ``t``."""
    from django_flosse.broadcasting._ids import IdFormat

    ids = IdFormat(backend.tag, ("t",), backend.format_position, backend.parse_position)
    return ids.prefix.split(".")[1]


def test_a_process_whose_first_subscriber_comes_during_an_outage_waits(
    own_redis: RedisServer,
) -> None:
    """A process that has not learned Redis' epoch yet (a worker started a moment ago) gets
    its first subscribers while Redis is down: they cannot read the client's id before the
    join, which waits for Redis; then they stream. (They ended with the `error` event: a
    soak cycle that restarted Redis while a new worker's 500 clients connected counted
    about 10,000 of them per outage.)"""
    own_redis.kill()
    backend = get_backend()  # new for these settings: it has never reached Redis
    reader = Reader(subscribe(request("some-id-of-before"), "t"))
    own_redis.start()
    joined(backend, "t")
    broadcast_after_restart("t", "first")
    got = reader.take_until("first")
    reader.stop()
    assert reader.error is None
    assert datas(got) == ["<reset>", "first"]  # the id names no life this Redis knows
