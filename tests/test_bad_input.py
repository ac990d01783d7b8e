"""Bad input: whatever a view yields, the stream stays well-formed and the process stays up.

Hypothesis throws arbitrary yields at ``@sse_stream`` views (``def`` and ``async def``, driven
in-process): text with CR/LF/NUL, unicode and lone surrogates, nested and unserialisable data,
tuples of every length, wrong types, payloads up to 1 MB, dicts with unknown keys and
``SSEEvent``\\ s with bad fields. For each stream, an oracle written here from the documented
contract (``docs/yield-styles.md``, the wire-format section of the design) says what each yield
must give, and the test checks the raw bytes with a spec-conformant parser:

* every valid yield before the first invalid one gives exactly its event (type, data, id,
  retry, as a browser's ``EventSource`` sees them);
* no line of the body is a field nobody asked for (each line is ``data:``, ``event:``,
  ``id:``, ``retry:`` or a comment, in exactly the intended numbers);
* an invalid yield ends the stream with exactly one ``error`` event whose JSON carries an
  ``error_id`` and no exception text (``DEBUG`` is off), after the events before it, and one
  ``sse.stream.error`` log line with that id and the exception;
* the connection closes as ``error`` (``completed`` when every yield was valid).

The last test does the same through a real uvicorn server with a fixed table of nasty values.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest
from django.test import RequestFactory
from django.utils.safestring import mark_safe
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from structlog.testing import capture_logs

from django_flosse import SSEEvent, sse_stream
from django_flosse.streaming._frames import ERROR_MESSAGE
from django_flosse.testing import Event, collect_events, parse_events
from tests.support.servers import LiveServer

# ----------------------------------------------------------------------------- the views


@sse_stream(name="bad_input.sync", heartbeat=None)
def sync_items(request: HttpRequest) -> Iterator[Any]:
    yield from request.flosse_items  # type: ignore[attr-defined]


@sse_stream(name="bad_input.async", heartbeat=None)
async def async_items(request: HttpRequest) -> AsyncIterator[Any]:
    for item in request.flosse_items:  # type: ignore[attr-defined]
        yield item


@dataclass
class Outcome:
    body: bytes
    logs: list[dict[str, Any]]
    close_reason: str | None


def run(kind: str, items: Any) -> Outcome:
    """Stream ``items`` through the sync or async view to the end, as a server would."""
    request = RequestFactory().get("/")
    request.flosse_items = items  # type: ignore[attr-defined]
    with capture_logs() as logs:
        if kind == "sync":
            response: Any = sync_items(request)
            try:
                body = b"".join(response.streaming_content)
            finally:
                response.close()
        else:

            async def drive() -> tuple[Any, bytes]:
                response: Any = await async_items(request)
                chunks = [chunk async for chunk in response.streaming_content]
                return response, b"".join(chunks)

            response, body = asyncio.run(asyncio.wait_for(drive(), 60))
    return Outcome(body, [dict(entry) for entry in logs], response.stream.close_reason)


# ----------------------------------------------------------------------------- the oracle


class Invalid(Exception):
    """The contract says this yield must end the stream with an error frame."""


UNSET: Any = object()


@dataclass
class Frame:
    """What one valid yield must put on the wire."""

    data: str
    event: str | None = None
    id: Any = UNSET  # UNSET: no id field; else the id's text
    retry: int | None = None
    comment: str | None = None


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise Invalid from exc
    return text


def _json(value: Any) -> str:
    try:
        text = json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise Invalid from exc
    return _utf8(text)


def _data(value: Any) -> str:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise Invalid
    return _json(value)


def _event(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is not str or "\r" in value or "\n" in value:
        raise Invalid
    return _utf8(value)


def _id(value: Any) -> Any:
    if value is None:
        return UNSET
    try:
        text = str(value)
    except Exception as exc:
        raise Invalid from exc
    if "\r" in text or "\n" in text or "\0" in text:
        raise Invalid
    return _utf8(text)


def _retry(value: Any) -> Any:
    if value is not None and (type(value) is not int or value < 0):
        raise Invalid
    return value


def _comment(value: Any) -> str | None:
    if value is not None and type(value) is not str:
        raise Invalid
    return None if value is None else _utf8(value)


def expected_frame(item: Any) -> Frame:
    """The documented meaning of one yield (raises ``Invalid`` for a bad one)."""
    if type(item) is str:
        return Frame(_utf8(item))
    if isinstance(item, tuple):
        if len(item) == 2:
            return Frame(_data(item[1]), event=_event(item[0]))
        if len(item) == 3:
            return Frame(_data(item[1]), event=_event(item[0]), id=_id(item[2]))
        raise Invalid
    if isinstance(item, SSEEvent):
        return Frame(
            _data(item.data),
            event=_event(item.event),
            id=_id(item.id),
            retry=_retry(item.retry),
            comment=_comment(item.comment),
        )
    if isinstance(item, dict):
        if "data" not in item:
            return Frame(_json(item))
        if set(item) - {"data", "event", "id", "retry"}:
            raise Invalid
        return Frame(
            _data(item["data"]),
            event=_event(item.get("event")),
            id=_id(item.get("id")),
            retry=_retry(item.get("retry")),
        )
    if isinstance(item, (bytes, bytearray, memoryview)):
        raise Invalid
    return Frame(_json(item))


def _lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def check_stream(items: list[Any], outcome: Outcome) -> None:
    """Compare what was sent with what the contract says (see the module docstring)."""
    body = outcome.body
    frames: list[Frame] = []
    invalid = False
    for item in items:
        try:
            frames.append(expected_frame(item))
        except Invalid:
            invalid = True
            break

    # 1. The events, as a browser's EventSource dispatches them.
    expected: list[Event] = []
    last_id: str | None = None
    retry: int | None = None
    for frame in frames:
        if frame.id is not UNSET:
            last_id = frame.id
        if frame.retry is not None:
            retry = frame.retry
        data = frame.data.replace("\r\n", "\n").replace("\r", "\n")
        expected.append(Event(frame.event or "message", data, last_id, retry))
    events = parse_events(body)
    if invalid:
        assert events[:-1] == expected
        error = events[-1]
        assert (error.event, error.id, error.retry) == ("error", last_id, retry)
        payload = json.loads(error.data)
        assert payload == {"message": ERROR_MESSAGE, "error_id": payload["error_id"]}
        assert re.fullmatch(r"[0-9a-f]{8}", payload["error_id"])
    else:
        assert events == expected

    # 2. Line by line: only intended fields, each as often as intended.
    text = body.decode("utf-8")  # strict: the stream is valid UTF-8
    counts = dict.fromkeys(("data", "event", "id", "retry", ""), 0)
    for frame in frames:
        counts["data"] += len(_lines(frame.data))
        counts["event"] += frame.event is not None
        counts["id"] += frame.id is not UNSET
        counts["retry"] += frame.retry is not None
        counts[""] += 0 if frame.comment is None else len(_lines(frame.comment))
    if invalid:
        counts["data"] += 1
        counts["event"] += 1
    assert text.endswith("\n\n") or (not frames and not invalid)
    seen = dict.fromkeys(counts, 0)
    blank = 0
    for line in _lines(text)[:-1]:  # the body ends with a line break
        if not line:
            blank += 1
            continue
        match = re.match(r"(data|event|id|retry|): ", line)
        assert match is not None, f"unintended line {line[:80]!r}"
        seen[match.group(1)] += 1
    assert seen == counts
    assert blank == len(frames) + invalid  # one dispatch per yield, one for the error

    # 3. The log and the close reason.
    errors = [entry for entry in outcome.logs if entry["event"] == "sse.stream.error"]
    if invalid:
        [entry] = errors
        assert entry["log_level"] == "error"
        assert entry["error_id"] == json.loads(events[-1].data)["error_id"]
        assert isinstance(entry["exc_info"], Exception)
        assert outcome.close_reason == "error"
    else:
        assert errors == []
        assert outcome.close_reason == "completed"


# ----------------------------------------------------------------------------- strategies

NASTY_TEXT = [
    "\r", "\n", "\r\n", "\n\r", "\n\n", "\r\r", "\x00", "\u2028", "\u2029", "\x85", "\x0b",
    "\x0c", "\x1c", "\ufeff", "\ud800", "\udfff", ":", " ", "data: x", "id: 666",
    "event: pwned", "retry: 1", "\xe9", "\U0001f600", "\\", '"',
]  # fmt: skip

chars = st.characters(exclude_categories=())  # every code point, lone surrogates included
texts = st.lists(
    st.one_of(st.text(alphabet=chars, max_size=12), st.sampled_from(NASTY_TEXT)), max_size=6
).map("".join)
huge = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["a", "\n", "\r\n", "\r", "\u00e9", "\x00", "data: x\n", "\U0001f600"]),
    st.integers(min_value=1, max_value=120_000),
)  # up to about 1 MB


class _Labelled(list):  # type: ignore[type-arg]
    """A list that Hypothesis can print (the repr of 5,000 nested lists would overflow)."""

    def __init__(self, label: str, items: list[Any]) -> None:
        super().__init__(items)
        self.label = label

    def __repr__(self) -> str:
        return self.label


_node: list[Any] = []
_deep = _Labelled("<5000 nested lists>", [_node])
for _ in range(5000):  # deeper than the encoder's recursion limit
    _node.append([])
    _node = _node[0]
_circular = _Labelled("<a list that contains itself>", [])
_circular.append(_circular)

UNSERIALISABLE = [
    object(), {1, 2}, frozenset({"a"}), 1j, b"bytes", bytearray(b"b"), memoryview(b"m"), type,
    print, Ellipsis, range(3), _deep, _circular, float("nan"), float("inf"), {"k": float("-inf")},
    {(1, 2): "tuple key"}, ValueError("boom"),
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: refused as JSON
    texts,
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.sampled_from(UNSERIALISABLE),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(
            st.one_of(texts, st.integers(), st.none(), st.booleans(), st.tuples(st.integers())),
            children,
            max_size=4,
        ),
    ),
    max_leaves=10,
)
fields_text = st.one_of(texts, huge)
event_names = st.one_of(st.none(), fields_text, st.sampled_from([1, b"ev", ["ev"], True]))
event_ids = st.one_of(
    st.none(), fields_text, st.integers(), st.uuids(), st.sampled_from([b"1", 1.5, True, ["1"]])
)
retries = st.one_of(
    st.none(), st.integers(min_value=-3, max_value=10**15), st.sampled_from([True, 1.5, "100"])
)
comments = st.one_of(st.none(), fields_text, st.sampled_from([1, ["c"], b"c"]))

items = st.one_of(
    fields_text,
    values,
    st.tuples(event_names, st.one_of(values, fields_text)),
    st.tuples(event_names, st.one_of(values, fields_text), event_ids),
    st.lists(st.one_of(values, fields_text), max_size=5).map(tuple),  # every length
    st.fixed_dictionaries(
        {"data": st.one_of(values, fields_text)},
        optional={"event": event_names, "id": event_ids, "retry": retries, "colour": values},
    ),
    st.dictionaries(texts, values, max_size=3),  # mostly without "data": sent whole as JSON
    st.builds(
        SSEEvent,
        data=st.one_of(values, fields_text),
        event=event_names,
        id=event_ids,
        retry=retries,
        comment=comments,
    ),
)
streams = st.lists(items, min_size=1, max_size=6)

HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kind", ["sync", "async"])
@HYPOTHESIS
@given(stream=streams)
@example(stream=["ok", ("ev", "a\r\nb"), SSEEvent("x", id="1\nevent: pwned")])
@example(stream=[SSEEvent("x", event="a\rid: 9")])
@example(stream=["x" * 1_000_000, "\ud800"])
@example(stream=[("ev", "\r\n" * 500_000, "7"), {"data": ["\u00e9" * 1000] * 250}, "ok"])
@example(stream=[SSEEvent("d", comment="c\n" * 300_000), SSEEvent("d", id="\r" + "i" * 999_999)])
@example(stream=[{"data": "x", "retry": -1}])
@example(stream=[{"data": "x", "colour": "red"}])
@example(stream=[("only-one",)])
@example(stream=[SSEEvent("c", comment="a\r\nid: 9\n\ndata: injected")])
@example(stream=[("ev", "d", "1\x00")])
def test_any_yields_keep_the_stream_well_formed(kind: str, stream: list[Any]) -> None:
    outcome = run(kind, stream)
    check_stream(stream, outcome)
    hypothesis_event(f"close: {outcome.close_reason}")
    hypothesis_event(f"body: {'>=512 KB' if len(outcome.body) >= 512 * 1024 else '<512 KB'}")


@pytest.mark.parametrize("kind", ["sync", "async"])
@HYPOTHESIS
@given(data=st.one_of(texts, huge), event=texts, id_=texts)
def test_valid_fields_round_trip_exactly(kind: str, data: str, event: str, id_: str) -> None:
    """Text that is allowed in a field arrives exactly (a narrower, denser property)."""
    event = event.replace("\r", "").replace("\n", "")
    id_ = id_.replace("\r", "").replace("\n", "").replace("\0", "")
    stream = [SSEEvent(data, event=event, id=id_), (event, data, id_), {"data": data}]
    check_stream(stream, run(kind, stream))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_nothing_after_an_invalid_yield_is_pulled_or_sent(kind: str) -> None:
    pulled: list[str] = []

    def generator() -> Iterator[Any]:
        pulled.append("first")
        yield "first"
        pulled.append("bad")
        yield b"bad"
        pulled.append("after")
        yield "after"

    outcome = run(kind, generator())
    assert [e.event for e in parse_events(outcome.body)] == ["message", "error"]
    assert pulled == ["first", "bad"]
    assert outcome.close_reason == "error"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(mark_safe("<b>hi</b>"), id="SafeString"),  # what render_to_string returns
    ],
)
def test_a_str_subclass_is_text_in_every_yield_style(value: str) -> None:
    """Package bug (formatters.format_item): a bare yield of a ``str`` subclass is sent as
    JSON (``data: "<b>hi</b>"``, quotes and escapes included) because the text branch checks
    ``type(raw) is str``, while ``(event, data)``, ``{"data": ...}`` and ``SSEEvent`` treat
    the same value as text. ``render_to_string()`` and ``mark_safe()`` return ``SafeString``,
    so ``yield render_to_string("row.html", ctx)`` (the htmx pattern) sends a JSON string.
    Fix: ``if kind is str or isinstance(raw, str): return encode_event(raw)`` (the
    ``kind is str`` test stays first for speed)."""
    request = RequestFactory().get("/")
    request.flosse_items = [  # type: ignore[attr-defined]
        ("message", value),
        {"data": value},
        SSEEvent(value),
        value,
    ]
    events = collect_events(sync_items(request), max_events=10)
    assert [e.data for e in events] == ["<b>hi</b>"] * 4


# ----------------------------------------------------------------------------- real server

#: (name in tests/views.py's table, what must arrive: event type and data, or None when the
#: yield is invalid and must end the stream with an error frame).
REAL_SERVER_CASES: list[tuple[str, tuple[str, str] | None]] = [
    ("crlf-data", ("message", "l1\nl2\nl3\nl4")),
    ("nul-data", ("message", "a\x00b")),
    ("unicode-lines", ("message", "a\u2028b\x85c\x0bd")),
    ("fake-fields", ("message", "x\nid: 666\nevent: pwned\nretry: 1\n\ndata: injected")),
    ("huge", ("message", "A" * 1_000_000 + "\nB")),
    ("event-crlf", None),
    ("id-lf", None),
    ("id-nul", None),
    ("surrogate", None),
    ("bytes", None),
    ("unknown-key", None),
    ("unserialisable", None),
    ("circular", None),
    ("nan", None),
]


def _expected_over_the_wire(case: tuple[str, str] | None) -> list[tuple[str, str]]:
    middle = [] if case is None else [case]
    after = [] if case is None else [("message", "after")]
    return [("message", "before"), *middle, *after]


@pytest.mark.server
@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_nasty_yields_through_uvicorn(
    live_server_factory: Callable[..., LiveServer], flavour: str
) -> None:
    server = live_server_factory("uvicorn", env={"DJANGO_SETTINGS_MODULE": "tests.settings_server"})
    error_ids = []
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(20.0)) as client:
        for name, case in REAL_SERVER_CASES:
            response = client.get(f"/bad-input/{flavour}/", params={"v": name})
            assert response.status_code == 200, (name, server.logs())
            events = parse_events(response.content)
            got = [(e.event, e.data) for e in events]
            if case is None:
                assert got[:-1] == [("message", "before")], name
                assert events[-1].event == "error", name
                payload = json.loads(events[-1].data)
                assert set(payload) == {"message", "error_id"}, name
                error_ids.append(payload["error_id"])
            else:
                assert got == _expected_over_the_wire(case), name
            assert all(e.id is None for e in events), name  # nothing set an id
            for line in _lines(response.text)[:-1]:
                assert line == "" or re.match(r"(data|event): ", line), (name, line[:80])
        # The server survived all of it and still serves.
        assert server.returncode is None
        ok = parse_events(client.get(f"/bad-input/{flavour}/", params={"v": "nul-data"}).content)
        assert [e.data for e in ok] == ["before", "a\x00b", "after"]
    logs = server.logs()
    for error_id in error_ids:
        assert f"error_id='{error_id}'" in logs, logs[-3000:]
    assert "Traceback" in logs  # the log has the traceback; the client never did
