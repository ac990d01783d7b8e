"""Small helpers shared by test modules."""

from __future__ import annotations

from django.core.signals import request_finished
from django.db import close_old_connections
from django.http import HttpResponseBase


def close_response(response: HttpResponseBase) -> None:
    """``response.close()`` as a server calls it, without the test client's DB cleanup
    (``close_old_connections`` on ``request_finished`` is not for a test's own thread)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
