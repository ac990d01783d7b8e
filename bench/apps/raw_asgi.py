"""The ceiling: a bare ASGI app that sends pre-encoded frames, one message per event.

No framework at all: what is left is the server's own cost per ``http.response.body``
message. A task waits on ``receive()`` for ``http.disconnect`` (as Django's handler does),
so a flood stops when its client leaves and an idle stream ends when it is dropped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from common import IDLE_SECONDS, open_streams, parse_query

PRE_ENCODED = 200_000
FRAMES = [b'event: tick\ndata: {"i": %d}\n\n' % i for i in range(PRE_ENCODED)]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await _stream(scope, receive, send)
    elif scope["path"] == "/active":
        body = json.dumps({"active": open_streams.value}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    indices, idle = parse_query(scope["query_string"])
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.ensure_future(watch())
    open_streams.add(1)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        for i in indices:
            frame = FRAMES[i] if i < PRE_ENCODED else b'event: tick\ndata: {"i": %d}\n\n' % i
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if gone.is_set():
                return
        if idle:
            await asyncio.wait_for(gone.wait(), IDLE_SECONDS)
            return
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()
        open_streams.add(-1)
