"""A Django peer's ASGI app with tracemalloc on from the start (``bench/conn_memory.py``).

``GET /__snapshot?NAME`` collects garbage and writes a tracemalloc snapshot to
``$BENCH_SNAPSHOT_DIR/NAME.snap``; every other request goes to the peer's app.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "8")))

from django_asgi import application as peer_application  # noqa: E402 (traced from here on)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/__snapshot":
        gc.collect()
        name = scope["query_string"].decode() or "snapshot"
        tracemalloc.take_snapshot().dump(
            os.path.join(os.environ["BENCH_SNAPSHOT_DIR"], f"{name}.snap")
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await peer_application(scope, receive, send)
