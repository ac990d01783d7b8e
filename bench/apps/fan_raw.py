"""The fan-out limit: a bare ASGI app that writes one pre-encoded frame to every open stream.

No framework and no queue: the publisher encodes each event once and awaits ``send`` for
every connection in turn. What is left is the server's own cost per ``http.response.body``
message. ``/publish`` runs the schedule (``fan_common.Schedule``) in this process;
``/active`` answers how many subscribers are registered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fan_common import EVENT, IDLE_SECONDS, Schedule

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]

subscribers: dict[Any, None] = {}  # each subscriber's ``send``


async def publish(data: dict[str, Any]) -> None:
    frame = b"event: %s\ndata: %s\n\n" % (EVENT.encode(), json.dumps(data).encode())
    message = {"type": "http.response.body", "body": frame, "more_body": True}
    for send in list(subscribers):
        await send(message)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/fan":
        await _subscribe(receive, send)
    elif path == "/publish":
        done = await Schedule.from_query(scope["query_string"]).run(publish)
        await _json(send, done)
    elif path == "/active":
        await _json(send, {"active": len(subscribers)})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _subscribe(receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    subscribers[send] = None

    async def until_disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(until_disconnected(), IDLE_SECONDS)
    except asyncio.TimeoutError:
        pass
    finally:
        subscribers.pop(send, None)


async def _json(send: Any, value: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": json.dumps(value).encode()})
