"""The wire encoder: input -> exact text, and no data can inject a field."""

from __future__ import annotations

from typing import Any

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given
from hypothesis import strategies as st

from django_flosse.events import KEEPALIVE, SSEEvent, encode_event, retry_frame


def parse(wire: str) -> list[tuple[str, str, str, int | None]]:
    """httpx-sse's spec parser, an implementation independent of ours."""
    lines, decoder = SSELineDecoder(), SSEDecoder()
    events = []
    for line in [*lines.decode(wire), *lines.flush()]:
        sse = decoder.decode(line)
        if sse is not None:
            events.append((sse.event, sse.data, sse.id, sse.retry))
    return events


@pytest.mark.parametrize(
    ("kwargs", "wire"),
    [
        ({"data": "hello"}, "data: hello\n\n"),
        ({"data": ""}, "data: \n\n"),
        ({"data": "a\nb"}, "data: a\ndata: b\n\n"),
        ({"data": "a\r\nb"}, "data: a\ndata: b\n\n"),
        ({"data": "a\rb"}, "data: a\ndata: b\n\n"),
        ({"data": "a\n\nb"}, "data: a\ndata: \ndata: b\n\n"),
        ({"data": "a\r\n\rb"}, "data: a\ndata: \ndata: b\n\n"),
        ({"data": "line\n"}, "data: line\ndata: \n\n"),
        ({"data": "\n"}, "data: \ndata: \n\n"),
        ({"data": "a\u2028b\u2029c\x85d\x0be\x0cf"}, "data: a\u2028b\u2029c\x85d\x0be\x0cf\n\n"),
        ({"data": "ünïcödé ✓"}, "data: ünïcödé ✓\n\n"),
        ({"data": " leading space"}, "data:  leading space\n\n"),
        ({"data": "x", "event": "update"}, "event: update\ndata: x\n\n"),
        ({"data": "x", "event": ""}, "event: \ndata: x\n\n"),
        ({"data": "x", "id": "42"}, "id: 42\ndata: x\n\n"),
        ({"data": "x", "id": 42}, "id: 42\ndata: x\n\n"),
        ({"data": "x", "id": 0}, "id: 0\ndata: x\n\n"),
        ({"data": "x", "id": ""}, "id: \ndata: x\n\n"),
        ({"data": "x", "retry": 0}, "retry: 0\ndata: x\n\n"),
        ({"data": "x", "retry": 3000}, "retry: 3000\ndata: x\n\n"),
        ({"data": "x", "comment": "note"}, ": note\ndata: x\n\n"),
        ({"data": "x", "comment": "two\nlines"}, ": two\n: lines\ndata: x\n\n"),
        (
            {"data": "d", "event": "e", "id": "i", "retry": 5, "comment": "c"},
            ": c\nretry: 5\nid: i\nevent: e\ndata: d\n\n",
        ),
    ],
)
def test_encode_event_exact_wire_text(kwargs: dict[str, Any], wire: str) -> None:
    assert encode_event(**kwargs) == wire


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (SSEEvent("hello"), "data: hello\n\n"),
        (SSEEvent(""), "data: \n\n"),
        (
            SSEEvent("a\r\nb", "tick", "7", 100),
            "retry: 100\nid: 7\nevent: tick\ndata: a\ndata: b\n\n",
        ),
        (SSEEvent({"n": 1}, event="update"), 'event: update\ndata: {"n": 1}\n\n'),
        (SSEEvent([1, "é"]), 'data: [1, "é"]\n\n'),
        (SSEEvent(None), "data: null\n\n"),
        (SSEEvent(True), "data: true\n\n"),
        (SSEEvent(1.5), "data: 1.5\n\n"),
        (SSEEvent("x", comment="hi"), ": hi\ndata: x\n\n"),
    ],
)
def test_sse_event_encode_exact_wire_text(event: SSEEvent, wire: str) -> None:
    assert event.encode() == wire


def test_encode_returns_str_and_accepts_a_dumps() -> None:
    encoded = SSEEvent({"a": 1}).encode(dumps=lambda value: "CUSTOM")
    assert encoded == "data: CUSTOM\n\n"
    assert type(encoded) is str


def test_keepalive_and_retry_frame() -> None:
    assert KEEPALIVE == b": keep-alive\n\n"
    assert retry_frame(2500) == b"retry: 2500\n\n"
    with pytest.raises(ValueError, match="retry"):
        retry_frame(-1)


@pytest.mark.parametrize("retry", [-1, True, False, 1.5, "100", [100]])
def test_retry_must_be_a_non_negative_int(retry: Any) -> None:
    with pytest.raises(ValueError, match="'retry'"):
        encode_event("x", retry=retry)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n", "trailing\r"])
def test_cr_or_lf_in_event_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="'event'"):
        encode_event("x", event=bad)
    with pytest.raises(ValueError, match="'event'"):
        SSEEvent("x", event=bad).encode()


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b"])
def test_cr_lf_or_nul_in_id_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="'id'"):
        encode_event("x", id=bad)
    with pytest.raises(ValueError, match="'id'"):
        SSEEvent("x", id=bad).encode()


def test_event_must_be_a_str() -> None:
    with pytest.raises(ValueError, match="'event'"):
        encode_event("x", event=5)  # type: ignore[arg-type]


def test_nul_is_fine_in_data_and_event() -> None:
    assert encode_event("a\x00b", event="e\x00") == "event: e\x00\ndata: a\x00b\n\n"


# -------------------------------------------------------------------- property tests

_data = st.text(st.characters(codec="utf-8"))
_no_crlf = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
_ids = st.one_of(
    st.none(),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00")),
    st.integers(min_value=0),
)


@given(
    data=_data,
    event=st.one_of(st.none(), _no_crlf),
    id=_ids,
    retry=st.one_of(st.none(), st.integers(min_value=0, max_value=2**53)),
)
def test_no_data_can_inject_a_field(
    data: str, event: str | None, id: str | int | None, retry: int | None
) -> None:
    wire = encode_event(data, event=event, id=id, retry=retry)
    wire.encode("utf-8")  # what the server sends
    normalised = data.replace("\r\n", "\n").replace("\r", "\n")
    assert parse(wire) == [(event or "message", normalised, "" if id is None else str(id), retry)]


@given(data=_data, comment=_data)
def test_a_comment_never_becomes_a_field(data: str, comment: str) -> None:
    wire = encode_event(data, comment=comment)
    normalised = data.replace("\r\n", "\n").replace("\r", "\n")
    assert parse(wire) == [("message", normalised, "", None)]


@given(data=st.lists(_data, min_size=1, max_size=5))
def test_events_in_one_chunk_stay_separate(data: list[str]) -> None:
    wire = "".join(encode_event(item) for item in data)
    assert [parsed[1] for parsed in parse(wire)] == [
        item.replace("\r\n", "\n").replace("\r", "\n") for item in data
    ]
