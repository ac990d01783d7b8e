"""The HTTP side of a stream: ``SSEResponse``, gzip negotiation, and the refusals.

``SSEResponse`` is a ``StreamingHttpResponse`` that streams event by event on any server.

Django decides how to iterate a streaming response from the kind of its iterator and
buffers the mismatched cases whole. This subclass answers both ways itself: ``__aiter__``
(ASGI) runs the stream natively, ``__iter__`` (WSGI, the sync test client) drives it on a
private event loop, one chunk at a time. Middleware that replaces ``streaming_content`` is
honoured: its iterator is bridged the same way, never buffered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, StreamingHttpResponse

from .. import reasons
from ..conf import Config
from ._bridge import ThreadedSource, iterate_on_private_loop

if TYPE_CHECKING:
    from ._lifecycle import Stream

__all__ = ["SSEResponse", "refusal", "wants_gzip"]

CONTENT_TYPE = "text/event-stream; charset=utf-8"


async def _as_bytes(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for frame in source:
        yield frame


class SSEResponse(StreamingHttpResponse):
    """The response of every ``@sse_stream`` view."""

    def __init__(self, stream: Stream, *, is_async: bool, gzip: bool = False) -> None:
        super().__init__(content_type=CONTENT_TYPE)
        self._replaced = False  # the base __init__ went through the setter above
        self.stream = stream
        # As in Django: ``is_async`` tells middleware which kind of iterator
        # ``streaming_content`` gives. Ours serves both; this follows the view.
        self.is_async = is_async
        self["Cache-Control"] = "no-cache, no-transform"
        self["X-Accel-Buffering"] = "no"
        if gzip:
            # We compress ourselves with a flush per chunk; GZipMiddleware sees the header
            # and leaves the response alone (its sync path would hold events back).
            self["Content-Encoding"] = "gzip"
            self["Vary"] = "Accept-Encoding"

    @property
    def streaming_content(self) -> Any:
        if self._replaced:
            return self._replaced_content()
        return self.__aiter__() if self.is_async else self.__iter__()

    @streaming_content.setter
    def streaming_content(self, value: Any) -> None:
        self._set_streaming_content(value)  # type: ignore[attr-defined]
        self._replaced = True

    def _replaced_content(self) -> Any:
        return StreamingHttpResponse.streaming_content.fget(self)  # type: ignore[union-attr]

    def __aiter__(self) -> AsyncIterator[bytes]:
        if not self._replaced:
            return self.stream.frames()
        content = self._replaced_content()
        if hasattr(content, "__aiter__"):
            return content  # type: ignore[no-any-return]
        # Middleware replaced our content with a sync iterator: step it in a thread.
        return _as_bytes(ThreadedSource(iter(content), bytes, ahead=1))

    def close(self) -> None:
        # A response closed before any server iterated it (a middleware replaced it, the
        # client left during the view) still closes its connection, exactly once.
        self.stream.close_unstarted()
        super().close()

    def __iter__(self) -> Iterator[bytes]:
        if self._replaced and not self.is_async:
            return iter(self._replaced_content())
        self.stream.on_private_loop = True
        frames: Generator[bytes, None, None] = iterate_on_private_loop(self.__aiter__())
        # WSGI servers call response.close(), not close() on this iterator: make sure the
        # stream (and the user's generator) is closed then, not whenever it is collected.
        self._resource_closers.append(frames.close)  # type: ignore[attr-defined]
        return frames


_GZIP_MIDDLEWARE = "django.middleware.gzip.GZipMiddleware"
_ACCEPTS_GZIP = re.compile(r"\bgzip\b")


def wants_gzip(request: HttpRequest) -> bool:
    accept = getattr(request, "META", {}).get("HTTP_ACCEPT_ENCODING", "")
    return (
        isinstance(accept, str)
        and bool(_ACCEPTS_GZIP.search(accept))
        and _GZIP_MIDDLEWARE in getattr(settings, "MIDDLEWARE", ())
    )


def refusal(reason: str, config: Config) -> HttpResponse:
    """The answer to a refused request: ``403``, or ``503``/``429`` with ``Retry-After``."""
    if reason == reasons.FORBIDDEN:
        return HttpResponseForbidden()
    # The stream is full (503) / this user holds enough connections (429).
    status = 503 if reason == reasons.STREAM_LIMIT else 429
    response = HttpResponse(status=status)
    response["Retry-After"] = str(config.limit_retry_after)
    return response
