"""In-process responses (test client, ``RequestFactory``): read them and close them as a
server would.

For real servers see ``tests.support.wire``; for the events of a response,
``django_flosse.testing`` (the public helpers).
"""

from __future__ import annotations

import asyncio

from django.core.signals import request_finished
from django.db import close_old_connections
from django.http import HttpResponseBase


def read_all(response: HttpResponseBase) -> bytes:
    """The whole body of a finite stream, as the server handed it over (sync or async)."""
    content = response.streaming_content  # type: ignore[attr-defined]
    if not hasattr(content, "__aiter__"):
        return b"".join(content)

    async def drain() -> bytes:
        return b"".join([chunk async for chunk in content])

    return asyncio.run(asyncio.wait_for(drain(), 10))


def close_response(response: HttpResponseBase) -> None:
    """``response.close()`` as a server calls it, without the test client's DB cleanup
    (``close_old_connections`` on ``request_finished`` is not for a test's own thread)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
