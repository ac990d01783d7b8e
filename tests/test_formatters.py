"""Yield styles: every value a view may yield -> the exact bytes sent (or the error)."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.test import override_settings

from django_flosse.conf import get_config
from django_flosse.events import SSEEvent, json_dumps_for
from django_flosse.exceptions import SSEYieldError
from django_flosse.formatters import encode_item, make_encoder, to_sse


def encode(raw: Any) -> bytes:
    return encode_item(raw, json_dumps_for(get_config().json_encoder))


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


class PointEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, Point):
            return {"x": o.x}
        return super().default(o)


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        ("hello", b"data: hello\n\n"),
        ("", b"data: \n\n"),
        ("two\nlines", b"data: two\ndata: lines\n\n"),
        ("caf\u00e9 \u2028", "data: caf\u00e9 \u2028\n\n".encode()),
        (("update", "text"), b"event: update\ndata: text\n\n"),
        (("update", {"n": 1}), b'event: update\ndata: {"n": 1}\n\n'),
        (("update", "text", "7"), b"id: 7\nevent: update\ndata: text\n\n"),
        (("update", "text", 7), b"id: 7\nevent: update\ndata: text\n\n"),
        (("update", "text", None), b"event: update\ndata: text\n\n"),
        ({"data": "x"}, b"data: x\n\n"),
        ({"data": {"n": 1}, "event": "e"}, b'event: e\ndata: {"n": 1}\n\n'),
        (
            {"data": "x", "event": "e", "id": "3", "retry": 10},
            b"retry: 10\nid: 3\nevent: e\ndata: x\n\n",
        ),
        ({"data": "x", "id": None}, b"data: x\n\n"),
        ({"n": 1, "s": "t"}, b'data: {"n": 1, "s": "t"}\n\n'),
        ({}, b"data: {}\n\n"),
        (SSEEvent("x", event="e", id=1), b"id: 1\nevent: e\ndata: x\n\n"),
        (SSEEvent("x", comment="hi"), b": hi\ndata: x\n\n"),
        (SSEEvent({"n": 1}), b'data: {"n": 1}\n\n'),
        (42, b"data: 42\n\n"),
        (1.5, b"data: 1.5\n\n"),
        (True, b"data: true\n\n"),
        (False, b"data: false\n\n"),
        (None, b"data: null\n\n"),
        ([1, "two", None], b'data: [1, "two", null]\n\n'),
        (["é"], 'data: ["é"]\n\n'.encode()),
    ],
)
def test_yield_style_exact_bytes(raw: Any, wire: bytes) -> None:
    assert encode(raw) == wire
    assert make_encoder(json_dumps_for(get_config().json_encoder))(raw) == wire
    assert to_sse(raw) == wire.decode()
    assert type(to_sse(raw)) is str


def test_django_json_encoder_is_the_default() -> None:
    value = {
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 1),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "price": decimal.Decimal("9.99"),
    }
    assert encode(value) == (
        b'data: {"when": "2024-05-01T12:30:00Z", "day": "2024-05-01", '
        b'"uuid": "12345678-1234-5678-1234-567812345678", "price": "9.99"}\n\n'
    )
    assert get_config().json_encoder is DjangoJSONEncoder


@override_settings(FLOSSE={"JSON_ENCODER": "tests.test_formatters.PointEncoder"})
def test_custom_json_encoder_from_settings() -> None:
    assert get_config().json_encoder is PointEncoder
    assert encode(("moved", Point(3))) == b'event: moved\ndata: {"x": 3}\n\n'
    assert to_sse(Point(4)) == 'data: {"x": 4}\n\n'


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"data": "x", "colour": "red"}, "'colour'"),
        ({"data": "x", "Event": "e", "comment": "c"}, "'Event', 'comment'"),
    ],
)
def test_dict_with_unknown_key_names_it(raw: dict[str, Any], names: str) -> None:
    with pytest.raises(SSEYieldError, match=names):
        encode(raw)


@pytest.mark.parametrize(
    "raw",
    [b"raw", bytearray(b"raw"), memoryview(b"raw")],
    ids=["bytes", "bytearray", "memoryview"],
)
def test_bytes_are_rejected_naming_the_type(raw: Any) -> None:
    name = type(raw).__name__
    with pytest.raises(SSEYieldError, match=name):
        encode(raw)
    with pytest.raises(SSEYieldError, match=name):
        encode(("e", raw))
    with pytest.raises(SSEYieldError, match=name):
        encode({"data": raw})
    with pytest.raises(SSEYieldError, match=name):
        encode(SSEEvent(raw))


@pytest.mark.parametrize(
    "raw",
    [Point(1), ("e", Point(1)), {"data": Point(1)}, {"nested": Point(1)}, SSEEvent(Point(1))],
    ids=["bare", "tuple", "dict-data", "dict-whole", "SSEEvent"],
)
def test_unserialisable_object_is_rejected_naming_the_type(raw: Any) -> None:
    with pytest.raises(SSEYieldError, match="Point"):
        encode(raw)


def test_unserialisable_bare_object_names_its_own_type() -> None:
    with pytest.raises(SSEYieldError, match=r"cannot serialise Point"):
        encode(Point(1))


@pytest.mark.parametrize("raw", [(), ("only",), ("a", "b", "c", "d")])
def test_wrong_tuple_length(raw: tuple[Any, ...]) -> None:
    with pytest.raises(SSEYieldError) as raised:
        encode(raw)
    # django-flosse 0.2.0's message, word for word: projects match on it.
    assert str(raised.value) == (
        f"Tuple yields must be (event, data) or (event, data, id), got {len(raw)}-tuple."
    )


def test_lone_surrogate_is_a_yield_error() -> None:
    with pytest.raises(SSEYieldError, match="UTF-8"):
        encode("broken \ud800 text")


def test_invalid_field_values_raise_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="'event'"):
        encode(("bad\nevent", "x"))
    with pytest.raises(ValueError, match="'id'"):
        encode(("e", "x", "1\n2"))
    with pytest.raises(ValueError, match="'retry'"):
        encode({"data": "x", "retry": -5})


def test_yield_error_is_a_value_error() -> None:
    assert issubclass(SSEYieldError, ValueError)
