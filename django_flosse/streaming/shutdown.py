"""Ending every stream when the server stops, so it exits instead of hanging.

Servers wait for open responses when they stop: uvicorn for ever by default
(``timeout_graceful_shutdown``), gunicorn until ``graceful_timeout`` kills its workers. An
endless stream never ends by itself, and no server tells an application it is stopping
(uvicorn's lifespan shutdown comes only after the responses finish). So django-flosse chains
a handler in front of the server's own for ``SIGTERM`` and ``SIGINT``: it asks every stream
of the process to end with reason ``shutdown`` (each client gets a final frame with a
jittered ``retry:`` hint, so they do not all reconnect at once), then hands the signal on.

The handler itself does no work. Python runs it on the main thread between two bytecodes of
whatever that thread was doing, and on uvicorn, daphne and hypercorn the main thread is the
event loop, which holds the registry's lock on every open and close: a handler that took
that lock (or any other: the writer's, logging's) would wait for ever on code it
interrupted, and every later signal would queue up behind it. So it only notes the signal
and hands the work over:

- Where the server's loop runs on the signalled thread, to that loop, with
  ``call_soon_threadsafe`` (a deque append and a byte on the loop's self-pipe, no lock: what
  asyncio's own ``add_signal_handler`` relies on). There the streams are asked to stop, and
  the signals received are handed to the server's handler, in order and one at a time, once
  the streams have closed (so daphne, which cancels its applications as soon as it stops,
  does not cut off their final frames) or after ``FINAL_FRAMES_GRACE``. A signal that comes
  while they close just joins the queue.
- Elsewhere (gunicorn's worker: its main thread runs no loop, the streams run on other
  threads, there is nothing here to wait for), the server's handler runs at once and a new
  thread asks the streams to stop. It is started with ``_thread.start_new_thread`` because
  ``threading.Thread.start`` takes the threading module's own lock, which the interrupted
  code may hold. A second signal starts a second ask, which finds nothing left to do.

It is installed (when ``FLOSSE["SHUTDOWN_SIGNALS"]`` is on) from ``AppConfig.ready()`` and
checked again when the first stream starts on the main thread: gunicorn's workers set
their handlers before loading the application, uvicorn sets its own after (so the first
stream, which runs on uvicorn's main-thread event loop, chains it), and granian's ASGI
worker, forked with its parent's handler (which ``ready()`` chains), sets its loop's own
over ours after loading the application (the first stream chains that one). With
gunicorn's ``preload_app`` the application loads in the master: call
:func:`install_signal_handlers` from the ``post_worker_init`` hook.

Where no signal reaches a process that runs streams, or only a handler set after ours on a
thread that runs none, nothing here runs (docs/servers.md): hypercorn's worker processes
(its parent sets a multiprocessing event instead) and granian's WSGI worker.
"""

from __future__ import annotations

import _thread
import asyncio
import signal
import threading
import time
from collections import deque
from types import FrameType
from typing import Any

from .. import reasons
from ..observing.registry import registry

__all__ = ["ensure_installed", "install_signal_handlers", "shutdown"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Longest a server's own signal handler waits for the streams' final frames.
FINAL_FRAMES_GRACE = 1.0
DRAIN_POLL_SECONDS = 0.01

_installed: dict[int, Any] = {}
_checked_from_a_stream = False
#: Signals received on the server's loop thread and not yet handed to the server's handler.
_received: deque[tuple[int, FrameType | None]] = deque()
#: Whether the loop is waiting for the streams to close before it hands the signals on.
_draining = False


def shutdown(reason: str = reasons.SHUTDOWN) -> int:
    """End every stream of this process (and any opened from now on); returns how many."""
    return registry.stop_all(reason)


def _handler(signum: int, frame: FrameType | None) -> None:
    # It may have interrupted code holding any lock: no lock, no logging, no work here.
    try:
        loop = asyncio.get_running_loop()  # the server's loop, when it runs on this thread
    except RuntimeError:
        loop = None
    if loop is not None:
        _received.append((signum, frame))
        loop.call_soon_threadsafe(_on_loop, loop)
        return
    _thread.start_new_thread(shutdown, ())
    previous = _installed.get(signum)
    if callable(previous):
        previous(signum, frame)


def _on_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The work of the signals received, on the server's loop (never inside the handler)."""
    global _draining
    if _draining:
        return  # the streams are closing: the signals are handed on when they have
    if shutdown():
        _draining = True
        _when_drained(loop, time.monotonic() + FINAL_FRAMES_GRACE)
    else:
        _hand_on()


def _when_drained(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    if registry.active() and time.monotonic() < deadline:
        loop.call_later(DRAIN_POLL_SECONDS, _when_drained, loop, deadline)
    else:
        _hand_on()


def _hand_on() -> None:
    """Each signal received, to the handler ours displaced: in order, one at a time."""
    global _draining
    _draining = False
    while _received:
        signum, frame = _received.popleft()
        previous = _installed.get(signum)
        if callable(previous):
            previous(signum, frame)


def ensure_installed() -> None:
    """Called as each stream starts; does its work once, on the first stream that runs on
    the main thread (uvicorn has set its handlers by then). Costs a flag check after that.

    It checks even when ``ready()`` chained both signals: a server may have replaced our
    handler since (granian's worker, forked with its master's handler, which ``ready()``
    chains, then sets its loop's own), and then it chains in front of the new one."""
    global _checked_from_a_stream
    if _checked_from_a_stream:
        return
    if threading.current_thread() is not threading.main_thread():
        return  # gunicorn's stream threads: ready() chained the worker's handlers already
    from ..conf import get_config

    if get_config().shutdown_signals:
        _checked_from_a_stream = True
        install_signal_handlers(SIGNALS)


def install_signal_handlers(signals: tuple[int, ...] = SIGNALS) -> bool:
    """Chain our handler in front of the current ones; True if installed.

    Only Python-level handlers (a server's) are chained. Where a signal still has its
    default or ignored disposition, it is left alone: nothing would wait for the streams.
    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    installed = False
    for signum in signals:
        current = signal.getsignal(signum)
        if current is _handler or not callable(current):
            continue
        _installed[signum] = current
        signal.signal(signum, _handler)
        installed = True
    return installed
