"""The frames the server writes itself: the final frame of a stream it ends, the error frame.

Both are plain events the client can listen for (``event: terminated``/``shutdown``/``timeout``,
``event: error``); neither ever carries exception text unless ``DEBUG`` is on.
"""

from __future__ import annotations

import json
import random

from django.conf import settings

from .. import reasons
from ..events import encode_event

__all__ = ["ERROR_MESSAGE", "RECONNECT_AFTER_MS", "error_frame", "final_frame"]

#: Reconnection delay suggested when the server ends a stream itself (jittered up to 2x).
RECONNECT_AFTER_MS = 1000

#: What clients see when a stream fails and ``DEBUG`` is off (plus the error id).
ERROR_MESSAGE = "The event stream failed on the server."


def final_frame(reason: str) -> bytes:
    """The last frame of a stream the server ends itself, naming the reason.

    Clients should close their ``EventSource`` on ``terminated``; on ``shutdown`` and
    ``timeout`` the ``retry`` hint is jittered so that clients do not all reconnect at once.
    """
    retry = None
    if reason in (reasons.SHUTDOWN, reasons.TIMEOUT):
        retry = random.randint(RECONNECT_AFTER_MS, 2 * RECONNECT_AFTER_MS)
    return encode_event(json.dumps({"reason": reason}), event=reason, retry=retry).encode()


def error_frame(exc: BaseException, error_id: str) -> bytes:
    """The one ``error`` event a failed stream sends: the message and the id the log has."""
    payload: dict[str, str] = {"message": ERROR_MESSAGE, "error_id": error_id}
    if settings.DEBUG:
        payload["detail"] = f"{type(exc).__name__}: {exc}"
    return encode_event(json.dumps(payload), event="error").encode()
