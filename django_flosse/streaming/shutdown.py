"""Ending every stream when the server stops, so it exits instead of hanging.

Servers wait for open responses when they stop: uvicorn for ever by default
(``timeout_graceful_shutdown``), gunicorn until ``graceful_timeout`` kills its workers. An
endless stream never ends by itself, and no server tells an application it is stopping
(uvicorn's lifespan shutdown comes only after the responses finish). So django-flosse chains
a handler in front of the server's own for ``SIGTERM`` and ``SIGINT``: it asks every stream
of the process to end with reason ``shutdown`` (each client gets a final frame with a
jittered ``retry:`` hint, so they do not all reconnect at once), then hands the signal on.

It is installed (when ``FLOSSE["SHUTDOWN_SIGNALS"]`` is on) from ``AppConfig.ready()`` and
again when a stream starts on the main thread, whichever finds the server's handler first:
gunicorn's workers set theirs before loading the application, uvicorn sets its own after
(so the first stream, which runs on uvicorn's main-thread event loop, chains it). With
gunicorn's ``preload_app`` the application loads in the master: call
:func:`install_signal_handlers` from the ``post_worker_init`` hook.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
import time
from collections.abc import Callable
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


def shutdown(reason: str = reasons.SHUTDOWN) -> int:
    """End every stream of this process (and any opened from now on); returns how many."""
    return registry.stop_all(reason)


def _handler(signum: int, frame: FrameType | None) -> None:
    asked = shutdown()
    previous = _installed.get(signum)
    if not callable(previous):
        return
    try:
        loop = asyncio.get_running_loop()  # the server's loop, when it runs on this thread
    except RuntimeError:
        loop = None
    if asked and loop is not None:
        # The streams send their final frames on this loop's next turns. A server that
        # cancels its applications as soon as it stops (daphne) would cut them off: hand
        # the signal on once they are all closed, or after FINAL_FRAMES_GRACE at most.
        deadline = time.monotonic() + FINAL_FRAMES_GRACE
        _when_drained(loop, deadline, functools.partial(previous, signum, frame))
    else:
        previous(signum, frame)


def _when_drained(
    loop: asyncio.AbstractEventLoop, deadline: float, then: Callable[[], object]
) -> None:
    if registry.active() and time.monotonic() < deadline:
        loop.call_later(DRAIN_POLL_SECONDS, _when_drained, loop, deadline, then)
    else:
        then()


def ensure_installed() -> None:
    """Called as each stream starts; does its work once, on the first stream that runs on
    the main thread (uvicorn has set its handlers by then). Costs a flag check after that."""
    global _checked_from_a_stream
    if _checked_from_a_stream or len(_installed) == len(SIGNALS):
        return
    if threading.current_thread() is not threading.main_thread():
        return  # gunicorn's stream threads: ready() chained the worker's handlers already
    from ..conf import get_config

    if get_config().shutdown_signals:
        _checked_from_a_stream = True
        install_signal_handlers()


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
