"""SSEEvent and the wire encoder (WHATWG HTML, "Server-sent events").

This module is pure: no Django, no I/O. It turns field values into the exact text of one
event and refuses any value that could smuggle in a field of its own:

* ``data`` is split on CRLF, CR and LF only (``str.splitlines`` also splits on U+2028 and
  friends, which would corrupt data) and every line gets its own ``data:`` field, so a
  newline in data can never start a new field. Empty data still sends one ``data:`` line,
  so the browser dispatches the event with ``""``.
* ``event`` and ``id`` may not contain CR or LF (``id`` not NUL either): a parser would end
  the field there and read the rest as a new one. They raise :class:`ValueError`.
* ``retry`` must be a non-negative ``int`` (not a ``bool``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KEEPALIVE", "SSEEvent", "encode_event", "retry_frame"]

Dumps = Callable[[Any], str]

#: The comment sent when the producer has been idle for ``heartbeat`` seconds.
KEEPALIVE = b": keep-alive\n\n"


def _lines(text: str) -> list[str]:
    # Only CRLF, CR and LF end a line in an event stream.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _check_field(name: str, value: str, forbidden: str) -> str:
    for char in forbidden:
        if char in value:
            raise ValueError(
                f"SSE field {name!r} may not contain {char!r} (it would end the field early "
                f"and start a new one); got {value!r}"
            )
    return value


def _check_retry(retry: Any) -> int:
    if type(retry) is not int or retry < 0:
        raise ValueError(
            f"SSE field 'retry' must be a non-negative int (milliseconds); got {retry!r}"
        )
    return retry


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> str:
    """Return the wire text of one event (it ends with the blank line that dispatches it).

    ``data`` must already be a ``str``; callers serialise other values first.
    """
    parts: list[str] = []
    if comment is not None:
        parts.extend(f": {line}\n" for line in _lines(comment))
    if retry is not None:
        parts.append(f"retry: {_check_retry(retry)}\n")
    if id is not None:
        parts.append(f"id: {_check_field('id', str(id), chr(13) + chr(10) + chr(0))}\n")
    if event is not None:
        if not isinstance(event, str):
            raise ValueError(f"SSE field 'event' must be a str; got {type(event).__name__}")
        parts.append(f"event: {_check_field('event', event, chr(13) + chr(10))}\n")
    if "\n" in data or "\r" in data:
        parts.extend(f"data: {line}\n" for line in _lines(data))
    else:
        parts.append(f"data: {data}\n")
    parts.append("\n")
    return "".join(parts)


def retry_frame(retry: int) -> bytes:
    """A frame that only sets the client's reconnection delay (milliseconds)."""
    return f"retry: {_check_retry(retry)}\n\n".encode()


def _default_dumps(value: Any) -> str:
    # Imported lazily so this module stays free of Django at import time; the configured
    # encoder (``FLOSSE["JSON_ENCODER"]``) is used by the streaming path instead.
    from .conf import get_config

    return get_config().dumps(value)


@dataclass
class SSEEvent:
    """One Server-Sent Event, for when a view needs more than a plain yield.

    The field order (``data``, ``event``, ``id``, ``retry``) is the one of 0.2.0, so positional
    construction keeps working; ``comment`` is new and keyword-only in practice.

    Examples::

        SSEEvent(data="hello")
        SSEEvent(data={"count": 1}, event="update")
        SSEEvent(data="done", event="finish", id="42", retry=5000)
    """

    data: Any
    event: str | None = None
    id: str | int | None = None
    retry: int | None = None
    comment: str | None = None

    def encode(self, dumps: Dumps | None = None) -> str:
        """Return the event's wire text (``str``, as in 0.2.0).

        Data that is not a ``str`` is serialised as JSON with the configured encoder
        (``DjangoJSONEncoder`` by default), or with ``dumps`` when given.
        """
        data = self.data
        if not isinstance(data, str):
            data = (dumps or _default_dumps)(data)
        return encode_event(
            data, event=self.event, id=self.id, retry=self.retry, comment=self.comment
        )


def json_dumps_with(encoder: type[json.JSONEncoder]) -> Dumps:
    """A ``dumps`` that keeps non-ASCII text as is (the stream is UTF-8) and reuses one encoder."""
    return encoder(ensure_ascii=False).encode
