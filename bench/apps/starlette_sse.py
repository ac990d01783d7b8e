"""sse-starlette's ``EventSourceResponse``: what a FastAPI or Starlette user would pick.

``sep="\\n"`` makes its frames byte-identical to the others' (its default is CRLF). Its
keep-alive ping (every 15 s) stays on, like ours.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from common import IDLE_SECONDS, open_streams, parse_query
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def stream(request: Request) -> EventSourceResponse:
    indices, idle = parse_query(request.scope["query_string"])

    async def events() -> AsyncIterator[dict[str, Any]]:
        open_streams.add(1)
        try:
            for i in indices:
                yield {"event": "tick", "data": json.dumps({"i": i})}
            if idle:
                await asyncio.sleep(IDLE_SECONDS)
        finally:
            open_streams.add(-1)

    return EventSourceResponse(
        events(), sep="\n", headers={"Cache-Control": "no-cache, no-transform"}
    )


async def active(request: Request) -> JSONResponse:
    return JSONResponse({"active": open_streams.value})


app = Starlette(routes=[Route("/stream", stream), Route("/active", active)])
