"""What a broadcast is before and after a backend has placed it: validated, encoded once.

A :class:`Draft` is made by the publishing call, which validates everything first (topic,
event name, data, size), so a bad call raises there and nothing is published. Its ``body``
is the event's wire text without the ``id`` field, encoded once: every subscriber of every
process sends these same bytes, after an ``id:`` line that says where the event sits.

A :class:`Message` is a draft a backend has given a position in its topic. Positions are
the backend's own (an integer for the database and memory backends, a stream entry id for
Redis), totally ordered within one topic; subscribers only compare them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import EncodedEvent, encode_event
from ..exceptions import SSEYieldError
from ..formatters import format_item

__all__ = ["MAX_TOPICS", "RESET_EVENT", "Draft", "Message", "check_topic", "make_draft"]

#: The event a subscriber gets when its position cannot be resumed: reload your state.
RESET_EVENT = "flosse-reset"

#: Topics one subscription may name (its resume id carries a position for each).
MAX_TOPICS = 64

_TOPIC = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


def check_topic(topic: Any) -> str:
    """``topic`` itself, or ``ValueError`` saying what a topic may be."""
    if type(topic) is not str or not _TOPIC.match(topic):
        raise ValueError(
            "a broadcast topic is 1-128 characters of letters, digits and '._:-' "
            f"(for instance 'orders' or 'user-42'); got {topic!r}"
        )
    return topic


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated broadcast, encoded once, not yet placed in its topic."""

    topic: str
    body: bytes  # "event: ...\ndata: ...\n\n" (UTF-8), without an id
    published_at: float  # time.time() of the publishing call (for the lag metric)


def make_draft(
    topic: str,
    data: Any,
    event: str | None,
    *,
    dumps: Callable[[Any], str],
    max_bytes: int,
    published_at: float,
) -> Draft:
    """Validate and encode one broadcast; ``ValueError`` says what was wrong."""
    check_topic(topic)
    if event == RESET_EVENT:
        raise ValueError(
            f"the event name {RESET_EVENT!r} is reserved: django-flosse sends it when a "
            "subscriber must reload its state"
        )
    if event is not None and type(event) is not str:
        raise ValueError(f"a broadcast's event name must be a str; got {type(event).__name__}")
    try:
        text = format_item({"data": data, "event": event} if event else {"data": data}, dumps)
        body = text.encode()
    except SSEYieldError as exc:  # a ValueError too; say it in broadcast's terms
        raise ValueError(f"cannot broadcast this data: {exc}") from exc
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"cannot broadcast this data: it is not valid UTF-8 at position {exc.start}"
        ) from exc
    if len(body) > max_bytes:
        raise ValueError(
            f"a broadcast event may be at most {max_bytes} bytes encoded "
            f"(FLOSSE['BROADCAST_MAX_BYTES']); this one is {len(body)}: send an id and let "
            "the page fetch the rest"
        )
    return Draft(topic, body, published_at)


def _fields(body: bytes) -> tuple[str | None, str]:
    """The event name and data of an encoded body (the inverse of the encoding above)."""
    event = None
    data: list[str] = []
    for line in body.decode().split("\n"):
        if line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("event: "):
            event = line[7:]
    return event, "\n".join(data)


@dataclass(eq=False, slots=True)
class Message:
    """A broadcast placed in its topic: the same object for every subscriber of a process."""

    topic: str
    position: Any
    body: bytes
    published_at: float
    #: The event every single-topic subscriber sends (its id is the same for all of them),
    #: made by the first one that needs it.
    shared: EncodedEvent | None = None
    _parsed: tuple[str | None, str] | None = None

    @classmethod
    def of(cls, draft: Draft, position: Any) -> Message:
        return cls(draft.topic, position, draft.body, draft.published_at)

    def event_with_id(self, event_id: str) -> EncodedEvent:
        """This message as the event a subscriber sends, with its resume id."""
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = _fields(self.body)
        frame = b"id: " + event_id.encode() + b"\n" + self.body
        return EncodedEvent(frame, parsed[1], parsed[0], event_id)


def reset_event(topics: tuple[str, ...], event_id: str) -> EncodedEvent:
    """The ``flosse-reset`` event: the subscriber's position is gone, reload the page."""
    data = json.dumps({"topics": list(topics)})
    frame = encode_event(data, event=RESET_EVENT, id=event_id).encode()
    return EncodedEvent(frame, data, RESET_EVENT, event_id)
