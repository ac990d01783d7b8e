"""Close reasons: every stream ends with exactly one (the names are a public contract)."""

from __future__ import annotations

__all__ = [
    "CANCELLED",
    "CLOSE_REASONS",
    "COMPLETED",
    "ERROR",
    "LOST",
    "SHUTDOWN",
    "TERMINATED",
    "TIMEOUT",
]

COMPLETED = "completed"  # the generator finished
CANCELLED = "cancelled"  # the client went away
ERROR = "error"  # the producer raised or yielded something invalid
TERMINATED = "terminated"  # stopped from the admin
SHUTDOWN = "shutdown"  # the server is stopping
TIMEOUT = "timeout"  # send timeout or maximum duration
LOST = "lost"  # its process died without closing it

CLOSE_REASONS = (COMPLETED, CANCELLED, ERROR, TERMINATED, SHUTDOWN, TIMEOUT, LOST)
