"""Turn whatever a view yields into SSE wire text: the yield styles.

=====================================  ==================================================
yield                                  event
=====================================  ==================================================
``"text"``                             ``data: text``
``(event, data)``                      named event; non-``str`` data is JSON
``(event, data, id)``                  named event with an id (``None`` ids are omitted)
``{"data": ..., "event": ..., ...}``   keys ``data``, ``event``, ``id``, ``retry`` only
``{...}`` without ``"data"``           the whole dict is JSON data
``SSEEvent(...)``                      used as is
numbers, booleans, ``None``, lists     JSON data
``bytes``, unserialisable objects      :class:`~django_flosse.exceptions.SSEYieldError`
=====================================  ==================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .events import Dumps, EncodedEvent, SSEEvent, default_dumps, encode_event, json_dumps_for
from .exceptions import SSEYieldError

__all__ = ["encode_item", "encoder_for", "format_item", "make_encoder", "to_sse"]

_DICT_KEYS = frozenset({"data", "event", "id", "retry"})


def _json(value: Any, dumps: Dumps) -> str:
    try:
        return dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SSEYieldError(
            f"cannot serialise {type(value).__name__} as JSON event data: {exc}"
        ) from exc


def _text(value: Any, dumps: Dumps) -> str:
    if type(value) is str or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise SSEYieldError(
            f"event data may not be {type(value).__name__}: decode it to str first "
            "(an event stream is text)"
        )
    return _json(value, dumps)


def format_item(raw: Any, dumps: Dumps) -> str:
    """Return the wire text for one yielded value, or raise ``SSEYieldError``/``ValueError``."""
    kind = type(raw)
    if kind is str or isinstance(raw, str):  # SafeString (render_to_string) is text too
        return encode_event(raw)
    if isinstance(raw, tuple):
        if len(raw) == 2:
            event, data = raw
            return encode_event(_text(data, dumps), event=event)
        if len(raw) == 3:
            event, data, id_ = raw
            return encode_event(_text(data, dumps), event=event, id=id_)
        # 0.2.0's text, word for word: projects match on it.
        raise SSEYieldError(
            f"Tuple yields must be (event, data) or (event, data, id), got {len(raw)}-tuple."
        )
    if isinstance(raw, EncodedEvent):
        return raw.frame.decode()
    if isinstance(raw, SSEEvent):
        return encode_event(
            _text(raw.data, dumps), event=raw.event, id=raw.id, retry=raw.retry, comment=raw.comment
        )
    if isinstance(raw, dict):
        if "data" not in raw:
            return encode_event(_json(raw, dumps))
        unknown = raw.keys() - _DICT_KEYS
        if unknown:
            raise SSEYieldError(
                f"unknown key(s) {sorted(map(str, unknown))} in a dict yield; allowed keys are "
                "'data', 'event', 'id' and 'retry' (a dict without 'data' is sent whole as JSON)"
            )
        return encode_event(
            _text(raw["data"], dumps),
            event=raw.get("event"),
            id=raw.get("id"),
            retry=raw.get("retry"),
        )
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raise SSEYieldError(
            f"a view may not yield {kind.__name__}: yield str (or data that serialises to JSON)"
        )
    return encode_event(_json(raw, dumps))


def _not_utf8(exc: UnicodeEncodeError) -> SSEYieldError:
    return SSEYieldError(
        "event text contains a character that is not valid in UTF-8 "
        f"(a lone surrogate?) at position {exc.start}"
    )


def encode_item(raw: Any, dumps: Dumps) -> bytes:
    """One yielded value to the UTF-8 bytes handed to the server."""
    try:
        return format_item(raw, dumps).encode()
    except UnicodeEncodeError as exc:
        raise _not_utf8(exc) from exc


def to_sse(raw: Any) -> str:
    """Convert one yielded value to SSE wire text (the 0.2.0 function; still returns ``str``)."""
    return format_item(raw, default_dumps)


# Data types whose JSON never fails for a reason the general path would word better.
_PLAIN_JSON = frozenset({dict, list, int, float, bool, type(None)})

#: Distinct event names whose validated prefix is kept (names are few in practice).
MAX_CACHED_EVENT_NAMES = 256


def make_encoder(dumps: Dumps) -> Callable[[Any], bytes]:
    """The per-event encode of the hot path, with ``dumps`` bound.

    The two commonest yields, ``"text"`` and ``("name", data)``, skip the general path: the
    event name is checked once and its ``event: name\ndata: `` prefix kept as bytes, and
    JSON text needs no line splitting unless the encoder writes newlines (``indent``).
    Everything else, and anything unusual, goes through :func:`format_item`.
    """
    prefixes: dict[str, bytes] = {}

    def prefix_for(event: str) -> bytes | None:
        prefix = prefixes.get(event)
        if prefix is None and type(event) is str and "\n" not in event and "\r" not in event:
            prefix = f"event: {event}\ndata: ".encode()
            if len(prefixes) < MAX_CACHED_EVENT_NAMES:
                prefixes[event] = prefix
        return prefix

    def encode(raw: Any) -> bytes:
        try:
            kind = type(raw)
            if kind is tuple and len(raw) == 2:
                event, data = raw
                if type(data) in _PLAIN_JSON and type(event) is str:
                    prefix = prefix_for(event)
                    if prefix is not None:
                        text = _json(data, dumps)
                        if "\n" not in text and "\r" not in text:
                            return prefix + text.encode() + b"\n\n"
            elif kind is str and "\n" not in raw and "\r" not in raw:
                return b"data: " + str.encode(raw) + b"\n\n"
            elif kind is EncodedEvent:  # a broadcast: encoded once, when it was published
                return raw.frame  # type: ignore[no-any-return]
            return format_item(raw, dumps).encode()
        except UnicodeEncodeError as exc:
            raise _not_utf8(exc) from exc

    return encode


_encoders: dict[type[json.JSONEncoder], Callable[[Any], bytes]] = {}


def encoder_for(encoder_class: type[json.JSONEncoder]) -> Callable[[Any], bytes]:
    """The per-event encoder with ``encoder_class``: one per process and encoder class,
    shared by every stream (with its cache of validated event-name prefixes)."""
    encode = _encoders.get(encoder_class)
    if encode is None:
        encode = _encoders[encoder_class] = make_encoder(json_dumps_for(encoder_class))
    return encode
