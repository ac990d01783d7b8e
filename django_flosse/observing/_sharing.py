"""The ``memory`` broadcast backend used by several processes: say so, now and then.

Each process of the ``memory`` backend hears only its own publishes, so subscribers of the
other processes silently miss events. The history writer (``_history``) and the dashboard's
topics panel (``_topics``) both look for it; this module holds what they share: whether the
configured backend reaches every process, and the rate-limited warning.
"""

from __future__ import annotations

import time

from django.core.exceptions import ImproperlyConfigured

from ..conf import get_config
from .log import BROADCAST_ONE_PROCESS, get_logger

__all__ = [
    "SHARING_WARN_INTERVAL",
    "broadcast_shared",
    "forget_warnings",
    "warn_unshared_broadcast",
]

#: Seconds between two warnings that the ``memory`` backend is used by several processes.
SHARING_WARN_INTERVAL = 600.0

_sharing_warned: list[float] = []  # when this process last warned (monotonic)


def broadcast_shared() -> bool:
    """Whether the configured broadcast backend reaches every process (not ``memory``).

    Read from the backend's class: the dashboard must not make a backend (and its reader
    threads) in a process that only looks.
    """
    from ..broadcasting.backends import _backend_class

    try:
        return _backend_class(get_config().broadcast_backend).shared
    except (ImportError, ImproperlyConfigured):
        return True  # broadcasting itself fails loudly where it is used: nothing to add


def warn_unshared_broadcast(processes: list[str]) -> bool:
    """Log ``sse.broadcast.memory_backend_shared``, at most once per process per
    :data:`SHARING_WARN_INTERVAL`; True if it logged now."""
    now = time.monotonic()
    if _sharing_warned and now - _sharing_warned[0] < SHARING_WARN_INTERVAL:
        return False
    _sharing_warned[:] = [now]
    get_logger().warning(
        BROADCAST_ONE_PROCESS,
        processes=sorted(processes),
        hint="BROADCAST_BACKEND 'memory' reaches the streams of its own process only: "
        "use 'database' or 'redis' when several processes stream",
    )
    return True


def forget_warnings() -> None:
    """Warn again at the next chance (tests reset the writer)."""
    _sharing_warned.clear()
