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

import signal
import threading
from types import FrameType
from typing import Any

from . import reasons
from .registry import registry

__all__ = ["ensure_installed", "install_signal_handlers", "shutdown"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_installed: dict[int, Any] = {}
_checked_from_a_stream = False


def shutdown(reason: str = reasons.SHUTDOWN) -> int:
    """End every stream of this process (and any opened from now on); returns how many."""
    return registry.stop_all(reason)


def _handler(signum: int, frame: FrameType | None) -> None:
    shutdown()
    previous = _installed.get(signum)
    if callable(previous):
        previous(signum, frame)


def ensure_installed() -> None:
    """Called as each stream starts; does its work once, on the first stream that runs on
    the main thread (uvicorn has set its handlers by then). Costs a flag check after that."""
    global _checked_from_a_stream
    if _checked_from_a_stream or len(_installed) == len(SIGNALS):
        return
    if threading.current_thread() is not threading.main_thread():
        return  # gunicorn's stream threads: ready() chained the worker's handlers already
    from .conf import get_config

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
