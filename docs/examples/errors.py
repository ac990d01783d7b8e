"""What a client sees when a stream fails."""

from django_flosse import sse_stream


def load_rows():
    raise ConnectionError("database at 10.0.0.5 refused the connection")


@sse_stream
def export(request):
    yield ("status", {"state": "started"})
    for row in load_rows():  # raises: the client gets one `error` event, the stream ends
        yield ("row", row)
