"""Resume on the ``memory`` backend: every id a client may send back, good or not.

A good id resumes with every later event of the subscription's topics, in order, once; an
id that cannot be placed (malformed, made up, another subscription's, ahead of the history,
too long, or older than what the history keeps) gives exactly one ``flosse-reset`` and
then only later events, and the reset's own id resumes from there.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Callable
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_flosse import broadcast, subscribe
from django_flosse.broadcasting._ids import MAX_ID_LENGTH, IdFormat
from django_flosse.broadcasting.backends import close_backend, get_backend
from django_flosse.events import EncodedEvent
from django_flosse.observing.registry import registry
from tests.support.subscribing import (
    MEMORY,
    Reader,
    datas,
    joined,
    opened_connection,
    request,
    use_memory,
)


@pytest.fixture
def configure(settings: Any) -> Callable[..., Any]:
    """``configure(**extra)``: the memory backend with ``extra`` settings."""
    return functools.partial(use_memory, settings)


def ids_of(backend: Any, *topics: str) -> IdFormat:
    names = tuple(sorted(set(topics)))
    return IdFormat(backend.tag, names, backend.format_position, backend.parse_position)


def published(backend: Any, topic: str, values: list[str]) -> list[EncodedEvent]:
    """Publish ``values`` to ``topic`` while a subscriber listens; its events (with ids)."""
    reader = Reader(subscribe(request(), topic))
    joined(backend, topic)
    for value in values:
        broadcast(topic, value)
    events = reader.take(len(values))
    reader.stop()
    return events


def resume(
    backend: Any, topics: tuple[str, ...], until: str, **ids: str | None
) -> list[EncodedEvent]:
    """Subscribe with ``ids`` (``last_id`` / ``query_id``), publish ``until`` once it has
    joined, and return what it sent up to it."""
    reader = Reader(subscribe(request(ids.get("last_id"), query_id=ids.get("query_id")), *topics))
    joined(backend, *topics, count=1)
    broadcast(topics[0], until)
    events = reader.take_until(until)
    reader.stop()
    return events


# --------------------------------------------------------------------------- good ids


@pytest.mark.parametrize("where", ["header", "query"])
def test_a_client_resumes_after_its_last_event(configure: Callable[..., Any], where: str) -> None:
    backend = configure()
    events = published(backend, "t", ["1", "2", "3", "4", "5"])
    last_id = events[1].id
    got = resume(
        backend,
        ("t",),
        "6",
        **({"last_id": last_id} if where == "header" else {"query_id": last_id}),
    )
    assert datas(got) == ["3", "4", "5", "6"]
    # The replayed events are the very ones live subscribers got (same ids, same bytes).
    assert [e.frame for e in got[:3]] == [e.frame for e in events[2:]]


def test_the_header_wins_over_the_query_parameter(configure: Callable[..., Any]) -> None:
    backend = configure()
    events = published(backend, "t", ["1", "2", "3", "4"])
    got = resume(backend, ("t",), "5", last_id=events[2].id, query_id=events[0].id)
    assert datas(got) == ["4", "5"]


def test_an_empty_header_falls_back_to_the_query_parameter(configure: Callable[..., Any]) -> None:
    backend = configure()
    events = published(backend, "t", ["1", "2", "3"])
    got = resume(backend, ("t",), "4", last_id="", query_id=events[0].id)
    assert datas(got) == ["2", "3", "4"]


def test_a_client_without_an_id_starts_with_the_next_event(configure: Callable[..., Any]) -> None:
    backend = configure()
    published(backend, "t", ["1", "2"])
    assert datas(resume(backend, ("t",), "3")) == ["3"]


def test_the_last_event_id_resumes_with_nothing_missed(configure: Callable[..., Any]) -> None:
    backend = configure()
    events = published(backend, "t", ["1", "2"])
    assert datas(resume(backend, ("t",), "3", last_id=events[-1].id)) == ["3"]


def test_a_multi_topic_client_resumes_every_topic(configure: Callable[..., Any]) -> None:
    backend = configure()
    reader = Reader(subscribe(request(), "b", "a"))
    joined(backend, "a", "b")
    order = [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3"), ("b", "b3")]
    for topic, value in order:
        broadcast(topic, value)
    broadcast("other", "not mine")
    live = reader.take(6)
    reader.stop()
    assert datas(live) == [value for _, value in order]
    assert len({e.id for e in live}) == 6
    for cut in range(6):
        end = f"a-end{cut}"
        got = datas(resume(backend, ("a", "b"), end, last_id=live[cut].id))
        order.append(("a", end))  # missed by the next resumes too
        missed = [value for _, value in order[cut + 1 :]]
        assert sorted(got) == sorted(missed), cut  # each once, none missing
        for topic in "ab":  # in order within each topic
            assert [v for v in got if v[0] == topic] == [v for v in missed if v[0] == topic]


def test_a_multi_topic_id_resumes_from_mid_replay(configure: Callable[..., Any]) -> None:
    """A client that drops during a replay resumes from the last replayed id."""
    backend = configure()
    for i in range(3):
        broadcast("a", f"a{i}")
        broadcast("b", f"b{i}")
    start = ids_of(backend, "a", "b").format({"a": 0, "b": 0})
    first = resume(backend, ("a", "b"), "a-end", last_id=start)
    assert sorted(datas(first)) == sorted(["a0", "a1", "a2", "b0", "b1", "b2", "a-end"])
    for cut in range(len(first) - 1):
        rest = resume(backend, ("a", "b"), f"a-end{cut}", last_id=first[cut].id)
        seen = datas(first[: cut + 1])
        expected = [v for v in datas(first) if v not in seen]
        got = datas(rest)
        assert got[-1] == f"a-end{cut}"
        assert sorted(got[:-1]) == sorted(expected + [f"a-end{c}" for c in range(cut)])


# --------------------------------------------------------------------------- resets


def _bad_ids(backend: Any, good: str) -> dict[str, str]:
    ids = ids_of(backend, "t")
    prefix = ids.prefix
    tag, digest, position = good.split(".")
    return {
        "garbage": "not an id",
        "whitespace": " ",
        "made-up": "m000000.0123456789ab.1",
        "other backend life": f"m{'0' * 6 if tag != 'm000000' else '1' * 6}.{digest}.{position}",
        "other digest": f"{tag}.{'0' * 12}.{position}",
        "other subscription": ids_of(backend, "u").format({"u": 1}),
        "two positions": prefix + "1.1",
        "negative": prefix + "-1",
        "not a number": prefix + "x",
        "empty position": prefix,
        "superscript digit": prefix + "\u00b2",
        "arabic digit": prefix + "\u0661",
        "huge": prefix + "9" * 30,
        "ahead": prefix + "1000",
        "over-long": good + "0" * MAX_ID_LENGTH,
        "nul": good + "\x00",
    }


BAD = [
    "garbage",
    "whitespace",
    "made-up",
    "other backend life",
    "other digest",
    "other subscription",
    "two positions",
    "negative",
    "not a number",
    "empty position",
    "superscript digit",
    "arabic digit",
    "huge",
    "ahead",
    "over-long",
    "nul",
]


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize("kind", BAD)
def test_an_id_that_cannot_be_placed_gets_one_reset(
    configure: Callable[..., Any], kind: str, where: str
) -> None:
    backend = configure()
    events = published(backend, "t", ["1", "2", "3"])
    bad = _bad_ids(backend, events[0].id)[kind]
    req = request(bad) if where == "header" else request(query_id=bad)
    connection = opened_connection(req)
    reader = Reader(subscribe(req, "t"))
    joined(backend, "t")
    broadcast("t", "4")
    got = reader.take_until("4")
    reader.stop()
    assert datas(got) == ["<reset>", "4"]
    reset = got[0]
    assert json.loads(reset.data) == {"topics": ["t"]}
    assert reset.id == ids_of(backend, "t").format({"t": 3})
    assert reset.frame.startswith(b"id: ")
    assert connection.broadcast_resets == 1
    registry.close(connection, "cancelled")
    # The reset's id resumes right after it.
    assert datas(resume(backend, ("t",), "5", last_id=reset.id)) == ["4", "5"]


def test_an_id_of_a_previous_backend_life_gets_a_reset(configure: Callable[..., Any]) -> None:
    backend = configure()
    old = published(backend, "t", ["1", "2"])[0].id
    close_backend()  # as a restarted process: the memory history is gone
    backend = get_backend()
    assert datas(resume(backend, ("t",), "x", last_id=old)) == ["<reset>", "x"]


def test_a_multi_topic_reset_names_every_topic(configure: Callable[..., Any]) -> None:
    backend = configure()
    got = resume(backend, ("b", "a"), "x", last_id="nonsense")
    assert datas(got) == ["<reset>", "x"]
    assert json.loads(got[0].data) == {"topics": ["a", "b"]}
    assert got[0].id == ids_of(backend, "a", "b").format({"a": 0, "b": 0})


@pytest.mark.parametrize(("keep", "gap", "reset"), [(5, 5, False), (5, 6, True), (5, 20, True)])
def test_an_id_older_than_the_history_gets_a_reset(
    configure: Callable[..., Any], keep: int, gap: int, reset: bool
) -> None:
    """The history keeps ``keep`` events; the client missed ``gap``."""
    backend = configure(BROADCAST_HISTORY=keep)
    events = published(backend, "t", [str(i) for i in range(1, 31)])
    last = events[29 - gap]
    got = datas(resume(backend, ("t",), "new", last_id=last.id))
    if reset:
        assert got == ["<reset>", "new"]
    else:
        assert got == [str(i) for i in range(31 - gap, 31)] + ["new"]


def test_one_trimmed_topic_resets_the_whole_subscription(configure: Callable[..., Any]) -> None:
    backend = configure(BROADCAST_HISTORY=3)
    reader = Reader(subscribe(request(), "a", "b"))
    joined(backend, "a", "b")
    broadcast("a", "a1")
    broadcast("b", "b1")
    first = reader.take(2)[1].id  # a1 and b1 seen
    for i in range(2, 10):
        broadcast("a", f"a{i}")  # "a" now keeps a7..a9 only
    broadcast("b", "b2")
    reader.stop()
    got = resume(backend, ("a", "b"), "end", last_id=first)
    assert datas(got) == ["<reset>", "end"]


def test_an_id_trimmed_by_age_gets_a_reset(configure: Callable[..., Any], monkeypatch: Any) -> None:
    import time as time_module

    backend = configure(BROADCAST_HISTORY_SECONDS=60)
    events = published(backend, "t", ["1", "2"])
    now = time_module.time()
    monkeypatch.setattr("django_flosse.broadcasting._publish.time.time", lambda: now + 120)
    broadcast("t", "3")  # publishing trims what is older than a minute
    assert datas(resume(backend, ("t",), "4", last_id=events[0].id)) == ["<reset>", "4"]


# --------------------------------------------------------------------------- properties

_POSITION_TEXT = st.text(alphabet=string.digits + "-.x\u00b2\u0661 ", max_size=22)


@hypothesis_settings(max_examples=150)
@given(
    raw=st.one_of(
        st.text(max_size=40),
        st.integers(min_value=-3, max_value=40).map(str),
        _POSITION_TEXT,
        st.just(""),
    ),
    with_prefix=st.booleans(),
    where=st.sampled_from(["header", "query"]),
)
def test_any_last_event_id_resumes_or_resets_once(raw: str, with_prefix: bool, where: str) -> None:
    """History: events 1..20 of "t", the last 8 kept. Any id: a correct resume or one reset."""
    if where == "query" and any(0xD800 <= ord(c) <= 0xDFFF for c in raw):
        where = "header"  # a URL cannot carry a lone surrogate; a header value can
    with override_settings(FLOSSE={**MEMORY, "BROADCAST_HISTORY": 8}):
        backend = get_backend()
        if "t" not in backend._topics:  # the first example: events 1..20 (data: position)
            for i in range(1, 21):
                broadcast("t", str(i))
        head = backend._topics["t"].head
        prefix = ids_of(backend, "t").prefix
        text = prefix + raw if with_prefix else raw
        req = request(text) if where == "header" else request(query_id=text)
        reader = Reader(subscribe(req, "t"))
        joined(backend, "t")
        live = str(head + 1)
        broadcast("t", live)
        got = datas(reader.take_until(live))
        reader.stop()
    if not text:
        assert got == [live]
        return
    position = int(raw) if with_prefix and raw.isascii() and raw.isdigit() else None
    if position is not None and head - 8 <= position <= head:
        assert got == [str(i) for i in range(position + 1, head + 2)]
    else:
        assert got == ["<reset>", live]
