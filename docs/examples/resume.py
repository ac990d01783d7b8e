"""Resume after a reconnect: every event carries an id, the browser sends the last one back.

``MESSAGES`` stands in for your storage (a table queried with ``id__gt=last_id``).
"""

import asyncio

from django_flosse import SSEEvent, sse_stream

MESSAGES = [(1, "hello"), (2, "how are you?"), (3, "fine, thanks")]


async def messages_after(last_id):
    return [(id_, text) for id_, text in MESSAGES if id_ > last_id]


def last_event_id(request):
    """The id the browser saw last, or 0 on a first visit (or a value we did not send)."""
    value = request.headers.get("Last-Event-ID", "")
    return int(value) if value.isdigit() else 0


@sse_stream(retry=5000, heartbeat=20)
async def messages(request):
    last_id = last_event_id(request)
    while True:
        for id_, text in await messages_after(last_id):
            yield SSEEvent(data={"text": text}, event="message", id=id_)
            last_id = id_
        await asyncio.sleep(1)
