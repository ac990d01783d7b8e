"""The chained signal handler, in process (the servers' side is tests/reliability)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from django_flosse.streaming import shutdown
from django_flosse.observing.registry import Connection, registry


@pytest.fixture
def server_handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """A server's own SIGTERM handler, as chained by install_signal_handlers()."""
    calls: list[float] = []
    monkeypatch.setitem(
        shutdown._installed, signal.SIGTERM, lambda *_: calls.append(time.monotonic())
    )
    yield calls
    registry.reset()


def live_connection() -> Connection:
    connection = Connection(id=uuid.uuid4().hex, stream="shutdown.unit")
    assert registry.open(connection) is None
    return connection


def test_without_an_event_loop_the_server_handler_runs_at_once(server_handler: list[float]) -> None:
    connection = live_connection()
    shutdown._handler(signal.SIGTERM, None)
    assert connection.stop_reason == "shutdown"
    assert len(server_handler) == 1  # gunicorn's worker: nothing to wait on here


async def test_on_the_servers_loop_it_waits_for_the_streams_final_frames(
    server_handler: list[float],
) -> None:
    connection = live_connection()
    shutdown._handler(signal.SIGTERM, None)
    assert connection.stop_reason == "shutdown"
    await asyncio.sleep(0.05)
    assert server_handler == []  # daphne would cancel the stream before its final frame
    closed_at = time.monotonic()
    registry.close(connection, "shutdown")
    await asyncio.sleep(0.1)
    assert len(server_handler) == 1
    assert server_handler[0] - closed_at < 0.05


async def test_a_stream_that_never_ends_holds_the_server_back_only_for_the_grace(
    server_handler: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutdown, "FINAL_FRAMES_GRACE", 0.2)
    live_connection()
    asked = time.monotonic()
    shutdown._handler(signal.SIGTERM, None)
    await asyncio.sleep(0.5)
    assert len(server_handler) == 1
    assert 0.2 <= server_handler[0] - asked < 0.4


async def test_with_no_stream_open_the_server_handler_runs_at_once(
    server_handler: list[float],
) -> None:
    shutdown._handler(signal.SIGTERM, None)
    assert len(server_handler) == 1


def test_a_second_install_does_not_chain_our_handler_to_itself(monkeypatch: Any) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(shutdown, "_installed", {})
    monkeypatch.setattr(shutdown.signal, "getsignal", lambda signum: shutdown._handler)
    monkeypatch.setattr(shutdown.signal, "signal", lambda *args: seen.append(args))
    assert shutdown.install_signal_handlers() is False
    assert seen == [] and shutdown._installed == {}
