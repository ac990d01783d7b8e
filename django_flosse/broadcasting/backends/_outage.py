"""One line in the log per outage of a backend's thread, and one when it ends.

A thread that talks to a database (or Redis) retries for as long as the engine is down;
logging each attempt would flood the log. :class:`Outage` logs
``sse.broadcast.backend_error`` at the first failure, ``recovered_after`` at the first
success after it, and says how long to wait before the next attempt (growing delays, each
drawn between half and all of its step).
"""

from __future__ import annotations

import random
import time

from ...observing.log import BROADCAST_BACKEND_ERROR, get_logger

__all__ = ["BACKOFF", "Outage"]

#: Seconds between attempts while the engine fails (the last one repeats).
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)


class Outage:
    """The failures of one part of a backend (``"reader"``, ``"listener"``); ``context``
    goes into both log lines (the backend, where its engine is)."""

    def __init__(self, part: str, **context: object) -> None:
        self.part = part
        self._context = context
        self._since: float | None = None
        self._failures = 0

    def failed(self, exc: BaseException) -> float:
        """Log the first failure of an outage; the seconds to wait before retrying."""
        if self._since is None:
            self._since = time.monotonic()
            get_logger().error(
                BROADCAST_BACKEND_ERROR,
                part=self.part,
                **self._context,
                error=repr(exc),
                retrying="with backoff",
                exc_info=exc,
            )
        delay = BACKOFF[min(self._failures, len(BACKOFF) - 1)]
        self._failures += 1
        # Between half and all of it: the processes of a deployment that lost their engine
        # together do not all knock at the same instant when it comes back.
        return delay * random.uniform(0.5, 1.0)

    def ok(self) -> None:
        """It works (again): log the end of an outage."""
        if self._since is not None:
            get_logger().info(
                BROADCAST_BACKEND_ERROR,
                part=self.part,
                **self._context,
                recovered_after=round(time.monotonic() - self._since, 1),
            )
            self._since, self._failures = None, 0
