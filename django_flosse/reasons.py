"""Close and rejection reasons (the names are a public contract: metrics labels, logs, rows).

Every connection ends with exactly one close reason; a request refused before it became a
connection is counted with one rejection reason.
"""

from __future__ import annotations

__all__ = [
    "CANCELLED",
    "CLOSE_REASONS",
    "COMPLETED",
    "ERROR",
    "FORBIDDEN",
    "LOST",
    "REJECT_REASONS",
    "SHUTDOWN",
    "STREAM_LIMIT",
    "TERMINATED",
    "TIMEOUT",
    "USER_LIMIT",
]

COMPLETED = "completed"  # the generator finished
CANCELLED = "cancelled"  # the client went away
ERROR = "error"  # the producer raised or yielded something invalid
TERMINATED = "terminated"  # stopped from the admin
SHUTDOWN = "shutdown"  # the server is stopping
TIMEOUT = "timeout"  # send timeout or maximum duration
LOST = "lost"  # its process died without closing it

CLOSE_REASONS = (COMPLETED, CANCELLED, ERROR, TERMINATED, SHUTDOWN, TIMEOUT, LOST)

FORBIDDEN = "forbidden"  # a permission class said no (403)
STREAM_LIMIT = "stream_limit"  # the stream's max_connections is reached (503)
USER_LIMIT = "user_limit"  # the user's max_connections_per_user is reached (429)

REJECT_REASONS = (FORBIDDEN, STREAM_LIMIT, USER_LIMIT)
