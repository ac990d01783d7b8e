"""sse-starlette's ``EventSourceResponse`` over the hand-written queue broadcaster.

``sep="\\n"`` as in ``starlette_sse.py``; ``/publish`` runs the schedule in the server's
event loop; ``/active`` answers how many subscribers are registered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fan_common import EVENT, Schedule
from queue_broadcaster import broadcaster
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def fan(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, Any]]:
        async for data in broadcaster.listen():
            yield {"event": EVENT, "data": json.dumps(data)}

    return EventSourceResponse(
        events(), sep="\n", headers={"Cache-Control": "no-cache, no-transform"}
    )


async def publish(request: Request) -> JSONResponse:
    schedule = Schedule.from_query(request.scope["query_string"])
    return JSONResponse(await schedule.run(broadcaster.publish))


async def active(request: Request) -> JSONResponse:
    return JSONResponse({"active": len(broadcaster.queues)})


app = Starlette(routes=[Route("/fan", fan), Route("/publish", publish), Route("/active", active)])
