"""One view that yields every style, in the order of the table on the page."""

from django_flosse import SSEEvent, sse_stream


@sse_stream
def every_style(request):
    yield "hello"  # str: data as is
    yield ("update", {"count": 1})  # (event, data)
    yield ("update", {"count": 2}, 2)  # (event, data, id)
    yield {"data": "saved", "event": "status", "id": "3"}  # dict with "data"
    yield {"user": "ada", "online": True}  # dict without "data": all of it is JSON data
    yield SSEEvent(data="bye", event="close", id=4, comment="last one")
    yield [1, 2, 3]  # any other JSON-serialisable value
