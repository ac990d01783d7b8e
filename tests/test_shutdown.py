"""The chained signal handler, in process (the servers' side is tests/reliability)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from django_flosse.observing.registry import Connection, registry
from django_flosse.streaming import shutdown

#: A handler that waits for the lock the interrupted code holds would wait for ever: the
#: watchdog releases it after this long, so the test fails instead of hanging the suite.
WATCHDOG_SECONDS = 5.0


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(shutdown, "_received", collections.deque())
    monkeypatch.setattr(shutdown, "_draining", False)
    yield
    registry.reset()


@pytest.fixture
def server_handler(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A server's own SIGTERM handler, as chained by install_signal_handlers()."""
    calls: list[float] = []
    monkeypatch.setitem(
        shutdown._installed, signal.SIGTERM, lambda *_: calls.append(time.monotonic())
    )
    return calls


class ServerHandler:
    """A server's own signal handler that notes each call and whether calls nested."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.depth = 0
        self.deepest = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)
        self.calls.append((signum, time.monotonic()))
        self.depth -= 1


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandler]:
    """Our handler really installed for SIGTERM, in front of a server's; restored after."""
    server = ServerHandler()
    monkeypatch.setattr(shutdown, "_installed", {})
    original = signal.signal(signal.SIGTERM, server)
    try:
        assert shutdown.install_signal_handlers((signal.SIGTERM,))
        assert signal.getsignal(signal.SIGTERM) is shutdown._handler
        yield server
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.fixture
def stop_all_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reasons registry.stop_all was called with (it still does its work)."""
    calls: list[str] = []
    stop_all = registry.stop_all

    def counting(reason: str) -> int:
        calls.append(reason)
        return stop_all(reason)

    monkeypatch.setattr(registry, "stop_all", counting)
    return calls


@contextlib.contextmanager
def holding_the_registry_lock() -> Iterator[threading.Event]:
    """Hold ``registry._lock`` on this thread, as the server's loop does in every open and
    close. The event is set if the watchdog had to release it (a handler waited for it)."""
    lock = registry._lock
    rescued = threading.Event()

    def rescue() -> None:
        rescued.set()
        lock.release()

    lock.acquire()
    watchdog = threading.Timer(WATCHDOG_SECONDS, rescue)
    watchdog.start()
    try:
        yield rescued
    finally:
        watchdog.cancel()
        watchdog.join()
        if not rescued.is_set():
            lock.release()


def wait_for(check: Callable[[], bool], timeout: float = WATCHDOG_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


async def await_for(check: Callable[[], bool], timeout: float = WATCHDOG_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def live_connection() -> Connection:
    connection = Connection(id=uuid.uuid4().hex, stream="shutdown.unit")
    assert registry.open(connection) is None
    return connection


def test_without_an_event_loop_the_server_handler_runs_at_once(server_handler: list[float]) -> None:
    connection = live_connection()
    shutdown._handler(signal.SIGTERM, None)
    assert len(server_handler) == 1  # gunicorn's worker: nothing to wait on here
    assert wait_for(lambda: connection.stop_reason == "shutdown")  # asked from a thread


async def test_on_the_servers_loop_it_waits_for_the_streams_final_frames(
    server_handler: list[float],
) -> None:
    connection = live_connection()
    shutdown._handler(signal.SIGTERM, None)
    await asyncio.sleep(0.05)
    assert connection.stop_reason == "shutdown"
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


async def test_with_no_stream_open_the_server_handler_runs_on_the_loops_next_turn(
    server_handler: list[float],
) -> None:
    shutdown._handler(signal.SIGTERM, None)
    assert server_handler == []  # never inside the signal handler
    await asyncio.sleep(0.01)
    assert len(server_handler) == 1


@pytest.mark.timeout(30)
async def test_a_signal_while_the_loop_holds_the_registry_lock_returns_and_the_work_follows(
    installed: ServerHandler,
) -> None:
    connection = live_connection()
    with holding_the_registry_lock() as rescued:
        signal.raise_signal(signal.SIGTERM)  # the deadlock of the issue: never returned
        returned = not rescued.is_set()
        asked_inside = connection.stop_reason
    assert returned, "the signal handler waited for the registry lock"
    assert asked_inside is None  # the work waits for the loop, which waits for this test
    assert await await_for(lambda: connection.stop_reason == "shutdown")
    assert installed.calls == []  # the stream still sends its final frame
    registry.close(connection, "shutdown")
    assert await await_for(lambda: len(installed.calls) == 1)
    await asyncio.sleep(0.05)
    assert [signum for signum, _ in installed.calls] == [signal.SIGTERM]


@pytest.mark.timeout(30)
def test_a_signal_while_the_main_thread_holds_the_registry_lock_without_a_loop(
    installed: ServerHandler,
) -> None:
    connection = live_connection()
    with holding_the_registry_lock() as rescued:
        signal.raise_signal(signal.SIGTERM)
        returned = not rescued.is_set()
        handed_on_inside = list(installed.calls)
        asked_inside = connection.stop_reason
    assert returned, "the signal handler waited for the registry lock"
    assert [s for s, _ in handed_on_inside] == [signal.SIGTERM]  # gunicorn's: at once
    assert asked_inside is None  # the asking thread waits for the lock
    assert wait_for(lambda: connection.stop_reason == "shutdown")
    assert len(installed.calls) == 1


@pytest.mark.timeout(30)
async def test_two_signals_back_to_back_on_the_loop_are_handed_on_in_turn_after_the_streams(
    installed: ServerHandler, stop_all_calls: list[str]
) -> None:
    connection = live_connection()
    with holding_the_registry_lock() as rescued:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        returned = not rescued.is_set()
    assert returned, "a signal handler waited for the registry lock"
    assert await await_for(lambda: connection.stop_reason == "shutdown")
    await asyncio.sleep(0.05)
    assert stop_all_calls == ["shutdown"]  # the second signal joined the first's queue
    assert installed.calls == []
    closed_at = time.monotonic()
    registry.close(connection, "shutdown")
    assert await await_for(lambda: len(installed.calls) == 2)
    await asyncio.sleep(0.05)
    assert [signum for signum, _ in installed.calls] == [signal.SIGTERM, signal.SIGTERM]
    assert all(at >= closed_at for _, at in installed.calls)
    assert installed.deepest == 1  # one after the other, never nested


@pytest.mark.timeout(30)
def test_two_signals_back_to_back_without_a_loop_each_reach_the_server_at_once(
    installed: ServerHandler, stop_all_calls: list[str]
) -> None:
    connection = live_connection()
    with holding_the_registry_lock() as rescued:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        returned = not rescued.is_set()
        handed_on_inside = [signum for signum, _ in installed.calls]
    assert returned, "a signal handler waited for the registry lock"
    assert handed_on_inside == [signal.SIGTERM, signal.SIGTERM]
    assert installed.deepest == 1
    assert wait_for(lambda: connection.stop_reason == "shutdown")
    assert wait_for(lambda: len(stop_all_calls) == 2)  # the second ask finds nothing to do
    assert len(installed.calls) == 2


def test_a_second_install_does_not_chain_our_handler_to_itself(monkeypatch: Any) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(shutdown, "_installed", {})
    monkeypatch.setattr(shutdown.signal, "getsignal", lambda signum: shutdown._handler)
    monkeypatch.setattr(shutdown.signal, "signal", lambda *args: seen.append(args))
    assert shutdown.install_signal_handlers() is False
    assert seen == [] and shutdown._installed == {}


def test_the_first_stream_chains_again_a_handler_that_replaced_ours(
    installed: ServerHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """granian's worker: forked with its master's handler, which ``ready()`` chains, then
    it sets its loop's own over ours. The first stream on the main thread chains that one."""
    monkeypatch.setattr(shutdown, "_checked_from_a_stream", False)
    monkeypatch.setattr(shutdown, "SIGNALS", (signal.SIGTERM,))  # both chained by ready()
    assert len(shutdown._installed) == len(shutdown.SIGNALS)
    worker = ServerHandler()
    signal.signal(signal.SIGTERM, worker)  # the worker's own, over ours
    shutdown.ensure_installed()
    assert signal.getsignal(signal.SIGTERM) is shutdown._handler
    assert shutdown._installed[signal.SIGTERM] is worker
    signal.signal(signal.SIGTERM, installed)
    shutdown.ensure_installed()  # a flag check from now on
    assert signal.getsignal(signal.SIGTERM) is installed
