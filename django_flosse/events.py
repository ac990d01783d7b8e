"""SSEEvent and the wire encoder (WHATWG HTML, "Server-sent events").

This module is pure: no settings, no I/O (the JSON encoder of the ``FLOSSE`` setting is
handed to it by ``AppConfig.ready()``, see :func:`use_json_encoder`). It turns field values
into the exact text of one event and refuses any value that could smuggle in a field of
its own:

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

__all__ = ["KEEPALIVE", "EncodedEvent", "SSEEvent", "encode_event", "retry_frame"]

#: The JSON encoder of data that is not a ``str`` when none is given (Django's default).
DEFAULT_JSON_ENCODER = "django.core.serializers.json.DjangoJSONEncoder"

Dumps = Callable[[Any], str]

#: The comment sent when the producer has been idle for ``heartbeat`` seconds.
KEEPALIVE = b": keep-alive\n\n"


def _lines(text: str) -> list[str]:
    # Only CRLF, CR and LF end a line in an event stream.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _bad_field(name: str, value: str, forbidden: str) -> ValueError:
    char = next(c for c in forbidden if c in value)
    return ValueError(
        f"SSE field {name!r} may not contain {char!r} (it would end the field early and "
        f"start a new one); got {value!r}"
    )


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

    ``data`` must already be a ``str``; callers serialise other values first. This runs
    once per event, so the common case (one data line, maybe an event name) is a single
    f-string; the field checks are plain ``in`` tests.
    """
    if "\n" in data or "\r" in data:
        body = "".join([f"data: {line}\n" for line in _lines(data)])
    else:
        body = f"data: {data}\n"
    if event is not None:
        if type(event) is not str:
            raise ValueError(f"SSE field 'event' must be a str; got {type(event).__name__}")
        if "\n" in event or "\r" in event:
            raise _bad_field("event", event, "\r\n")
        body = f"event: {event}\n{body}"
    if id is not None:
        id = str(id)
        if "\n" in id or "\r" in id or "\0" in id:
            raise _bad_field("id", id, "\r\n\0")
        body = f"id: {id}\n{body}"
    if retry is not None:
        body = f"retry: {_check_retry(retry)}\n{body}"
    if comment is not None:
        body = "".join([f": {line}\n" for line in _lines(comment)]) + body
    return body + "\n"


def retry_frame(retry: int) -> bytes:
    """A frame that only sets the client's reconnection delay (milliseconds)."""
    return f"retry: {_check_retry(retry)}\n\n".encode()


_default: list[Dumps] = []  # the dumps set by use_json_encoder(), built lazily otherwise


def use_json_encoder(encoder_class: type[json.JSONEncoder]) -> None:
    """Make ``encoder_class`` the one of :meth:`SSEEvent.encode` and ``to_sse()`` (the
    ``FLOSSE["JSON_ENCODER"]`` setting, set by the app's wiring)."""
    _default[:] = [json_dumps_for(encoder_class)]


def default_dumps(value: Any) -> str:
    """JSON text of ``value`` with the configured encoder (``DjangoJSONEncoder`` until set)."""
    if not _default:
        from django.core.serializers.json import DjangoJSONEncoder  # no settings involved

        use_json_encoder(DjangoJSONEncoder)
    return _default[0](value)


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
            data = (dumps or default_dumps)(data)
        return encode_event(
            data, event=self.event, id=self.id, retry=self.retry, comment=self.comment
        )


class EncodedEvent(SSEEvent):
    """An event whose wire bytes were made once and are sent as they are (a broadcast,
    encoded when it was published and shared by every subscriber).

    Read-only, so that its fields and its bytes never disagree: to change something, yield
    a new ``SSEEvent(data=event.data, event=event.event, id=event.id)``.
    """

    frame: bytes

    def __init__(self, frame: bytes, data: str, event: str | None, id: str | None) -> None:
        for name, value in (("data", data), ("event", event), ("id", id), ("frame", frame)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "retry", None)
        object.__setattr__(self, "comment", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"a broadcast event is read-only (it was encoded once for every subscriber); "
            f"yield SSEEvent(data=event.data, event=event.event, id=event.id, {name}=...) "
            "instead"
        )

    def encode(self, dumps: Dumps | None = None) -> str:
        return self.frame.decode()


_dumps_by_class: dict[type[json.JSONEncoder], Dumps] = {}


def json_dumps_for(encoder_class: type[json.JSONEncoder]) -> Dumps:
    """A ``dumps`` for event data: non-ASCII kept as is (the stream is UTF-8), one encoder.

    ``NaN`` and infinities are refused (``ValueError``): browsers' ``JSON.parse`` rejects them.

    ``JSONEncoder.encode`` spends most of its time in Python-level set-up before it reaches
    the C encoder; for encoders that only customise ``default()`` (``DjangoJSONEncoder``
    does) we build that C encoder once and call it directly: about 3x faster per event.
    Its circular-reference check is off (a stale marker left by a failed call could reject
    later, valid data); a circular structure fails with ``RecursionError`` instead. One per
    encoder class and process (cached).
    """
    dumps = _dumps_by_class.get(encoder_class)
    if dumps is None:
        encoder = encoder_class(ensure_ascii=False, allow_nan=False)
        dumps = _fast_dumps(encoder) or encoder.encode
        _dumps_by_class[encoder_class] = dumps
    return dumps


def _fast_dumps(encoder: json.JSONEncoder) -> Dumps | None:
    kind = type(encoder)
    make = getattr(json.encoder, "c_make_encoder", None)
    if (
        make is None
        or kind.encode is not json.JSONEncoder.encode
        or kind.iterencode is not json.JSONEncoder.iterencode
    ):
        return None
    try:
        iterencode = make(
            None,
            encoder.default,
            json.encoder.encode_basestring,
            None,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:  # another Python's private signature: use the public path
        return None
    quote = json.encoder.encode_basestring

    def dumps(value: Any) -> str:
        if type(value) is str:
            return quote(value)
        return "".join(iterencode(value, 0))

    sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {"c": -1}}
    return dumps if dumps(sample) == encoder.encode(sample) else None
