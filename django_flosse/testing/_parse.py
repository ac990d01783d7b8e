"""The event stream parser of the test helpers: what a browser's ``EventSource`` does with
the bytes (WHATWG HTML, "Server-sent events", the "interpret the stream" steps)."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "parse_events"]

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One dispatched event, as a browser's ``EventSource`` would see it.

    ``event`` is ``"message"`` when the stream named no type. ``id`` and ``retry`` are the
    stream's state when the event was dispatched, as in the browser: ``id`` is the last event
    id (``lastEventId``) and ``retry`` the reconnection delay in milliseconds, each ``None``
    until the stream first sets it.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (what a view's non-``str`` yield was sent as)."""
        return json.loads(self.data)


class _Parser:
    """The event stream interpretation of the WHATWG HTML spec, fed chunk by chunk.

    Lines end at CRLF, CR or LF (a CR at the end of a chunk waits for the next one, which
    may start with its LF); comments are ignored; an event is dispatched at a blank line
    only if it has data; an unfinished event at the end of the stream is discarded.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes | str, *, final: bool = False) -> list[Event]:
        text = chunk if isinstance(chunk, str) else self._decoder.decode(chunk, final)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buffer = self._buffer + text
        events: list[Event] = []
        start = 0
        for end_of_line in _EOL.finditer(buffer):
            if end_of_line.group() == "\r" and end_of_line.end() == len(buffer) and not final:
                break  # maybe the first half of a CRLF
            event = self._line(buffer[start : end_of_line.start()])
            start = end_of_line.end()
            if event is not None:
                events.append(event)
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event_type = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event(
            event=event_type or "message", data="\n".join(data), id=self._last_id, retry=self._retry
        )


def parse_events(stream: bytes | str) -> list[Event]:
    """Parse a whole event stream (for example a response body saved by another tool)."""
    return _Parser().feed(stream, final=True)
