"""Bad input at publish and subscribe, on every backend: a clear error or a reset, nothing else.

Hypothesis throws arbitrary topics, payloads and event names at ``broadcast()`` and
``abroadcast()``, and arbitrary ``Last-Event-ID`` headers and ``lastEventId`` query values
at ``subscribe()``: oversized, malformed, negative, non-ASCII digits, ids of other topics
and subscriptions, ids of another backend (or another life of this one), positions ahead
of the history or trimmed from it. Each subscription runs on the ``memory`` backend, the
``database`` one (the SQLite test database) and ``redis`` (the session's ``redis-server``),
and what it sends must be, exactly:

- a good id (one this subscription's topics could have given, still covered by the
  history): every later event of its topics, in order, once, then the live ones;
- anything else: one ``flosse-reset`` naming its topics, then only the live events;

never an exception, never a frame with a field other than ``id``, ``event`` and ``data``,
never an event (or a history read) of a topic the view did not subscribe, and never a
history read past one page per topic and position. The oracle here decides what a good id
is from the id format documented in ``broadcasting/_ids.py``, not from the code under test.

The runs are deterministic (``derandomize``) and bounded (``max_examples``, no deadline).
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_flosse import abroadcast, broadcast, subscribe
from django_flosse.broadcasting import RESET_EVENT
from django_flosse.broadcasting._ids import MAX_ID_LENGTH, IdFormat
from django_flosse.broadcasting.backends import get_backend
from django_flosse.broadcasting.backends.base import PAGE_SIZE, Backend
from tests.support.redis import RedisServer
from tests.support.redis import redis_server_fixture as redis_server_fixture  # the fixture
from tests.support.subscribing import fields_of, request, settled_reader

pytestmark = pytest.mark.django_db(transaction=True)

#: Seconds anything expected may take on a loaded machine (never reached when it works).
WAIT = 15.0

BOUNDED = hypothesis_settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SUBSCRIBED, OTHER = "t", "u"
_INT_POSITION = re.compile(r"[0-9]{1,18}\Z")
_REDIS_POSITION = re.compile(r"([0-9]{1,20})-([0-9]{1,20})\Z")


# --------------------------------------------------------------------------- the backends
@dataclass
class History:
    """One backend with a known history of ``t`` (and of ``u``, never subscribed here).

    ``events`` are the events of ``t`` in order, as (position, data); ``floor`` says,
    from the events published so far, from which position on the history covers a resume
    (``None``: from the first event's, or from zero when nothing was trimmed, as on Redis,
    whose positions are not consecutive: one before the first entry was never an id).
    """

    name: str
    backend: Backend
    floor: Callable[[int], Any]  # the number of events published -> floor (or None)
    parse: Callable[[str], Any]  # the oracle's reading of a position (None: not one)
    events: list[tuple[Any, str]] = field(default_factory=list)
    #: The positions of the events published first, as id text (fixed: the strategies
    #: draw from them, and must draw the same way in every example).
    first: list[str] = field(default_factory=list)
    reads: list[tuple[str, Any, Any]] = field(default_factory=list)  # (topic, after, future)

    @property
    def ids(self) -> IdFormat:
        return id_format(self.backend, SUBSCRIBED)

    def covered(self, position: Any) -> bool:
        first, head = self.events[0][0], self.events[-1][0]
        floor = self.floor(len(self.events))
        if floor is None:
            return position == self.backend.zero or first <= position <= head
        return bool(floor <= position <= head)

    def after(self, position: Any) -> list[str]:
        return [data for at, data in self.events if at > position]


def id_format(backend: Backend, *topics: str) -> IdFormat:
    names = tuple(sorted(set(topics)))
    return IdFormat(backend.tag, names, backend.format_position, backend.parse_position)


def _int_position(text: str) -> int | None:
    return int(text) if _INT_POSITION.match(text) else None


def _redis_position(text: str) -> tuple[int, int] | None:
    match = _REDIS_POSITION.match(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if max(ms, seq) < 2**64 else None


def _database_floor(published: int) -> int:
    # A publish that brings the topic to a multiple of 100 keeps the last 50 (HISTORY).
    return max(0, published // 100 * 100 - 50)


#: Per backend: its settings, how many events of ``t`` to publish first, the floor after n
#: events, and how a position is read.
BACKENDS: dict[str, tuple[dict[str, Any], int, Callable[[int], Any], Callable[[str], Any]]] = {
    "memory": ({"BROADCAST_HISTORY": 8}, 20, lambda n: max(0, n - 8), _int_position),
    "database": ({"BROADCAST_HISTORY": 50}, 100, _database_floor, _int_position),
    # Nothing is trimmed from a stream of a few hundred entries (MAXLEN ~ 1000).
    "redis": ({"BROADCAST_HISTORY": 1000}, 20, lambda n: None, _redis_position),
}


@pytest.fixture(params=list(BACKENDS))
def history(request: pytest.FixtureRequest, settings: Any) -> Iterator[History]:
    name = request.param
    extra, count, floor, parse = BACKENDS[name]
    flosse = {"BROADCAST_BACKEND": name, "PERSISTENCE": False, **extra}
    if name == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()
        flosse["BROADCAST_REDIS_URL"] = server.url
    settings.FLOSSE = flosse
    backend = get_backend()
    known = History(name, backend, floor, parse)
    watcher = settled_reader(backend, request_with(), SUBSCRIBED)
    for i in range(1, count + 1):
        broadcast(SUBSCRIBED, f"t:{i}")
    for i in range(1, 4):
        broadcast(OTHER, f"u:{i}")
    for event in watcher.take_until(f"t:{count}"):
        known.events.append((position_of(known, event.id), event.data))
    watcher.stop()
    known.first = [backend.format_position(at) for at, _ in known.events]
    assert [data for _, data in known.events] == [f"t:{i}" for i in range(1, count + 1)]
    record_reads(known)
    yield known


def request_with(header: str | None = None, query: str | None = None) -> Any:
    return request(header, query_id=query)


def position_of(history: History, event_id: str) -> Any:
    prefix = history.ids.prefix
    assert event_id.startswith(prefix), event_id
    position = history.parse(event_id[len(prefix) :])
    assert position is not None, event_id
    return position


def record_reads(history: History) -> None:
    """Record every history read a subscription asks of the backend, and its page's size."""
    backend = history.backend
    read = backend.read

    def recorded(topic: str, after: Any, upto: Any) -> Any:
        future = read(topic, after, upto)
        history.reads.append((topic, after, future))
        return future

    backend.read = recorded  # type: ignore[method-assign]


# --------------------------------------------------------------------------- ids to try
def _other_backend_ids(history: History) -> list[str]:
    digest = history.ids.prefix.split(".")[1]
    return [
        f"d.{digest}.5",  # the database backend's
        f"m0a1b2c.{digest}.5",  # a memory backend's (another process, another life)
        f"r0a1b2c3d.{digest}.1-0",  # a Redis of another epoch
        f"r0a1b2c3d.{digest}.5",
    ]


def _position_texts(history: History) -> st.SearchStrategy[str]:
    """Position parts near the real ones, and position-like junk."""
    known = history.first
    head = history.backend.parse_position(known[-1])
    nearby: list[str] = []
    if isinstance(head, int):
        nearby = [str(n) for n in (0, 1, head + 1, head + 1000, 10**18 - 1, 10**18)]
    else:
        ms, seq = head
        nearby = [f"{ms}-{seq + 1}", f"{ms + 1}-0", "0-0", "0-1", f"{ms}-{2**64}", "1-0"]
    junk = st.text(alphabet=string.digits + "-.+ x\u00b2\u0661\u0663\uff11\u2070", max_size=24)
    return st.one_of(
        st.sampled_from(known),
        st.sampled_from(nearby),
        st.integers(min_value=-(10**20), max_value=10**20).map(str),
        junk,
    )


def id_texts(history: History) -> st.SearchStrategy[str]:
    prefix = history.ids.prefix
    others = [id_format(history.backend, OTHER).prefix, id_format(history.backend, "t", "u").prefix]
    good = history.first
    return st.one_of(
        st.text(max_size=60),
        _position_texts(history).map(lambda part: prefix + part),
        # another subscription's ids: of the other topic, of both topics, of a prefix
        st.tuples(st.sampled_from(others), _position_texts(history)).map("".join),
        st.sampled_from(good).map(lambda part: f"{others[1]}{part}.{part}"),
        st.sampled_from(_other_backend_ids(history)),
        # oversized: a good id padded, and plain junk
        st.sampled_from(good).map(lambda part: prefix + part + "0" * MAX_ID_LENGTH),
        st.integers(min_value=MAX_ID_LENGTH - 2, max_value=MAX_ID_LENGTH + 2).map(
            lambda n: prefix + "1" * (n - len(prefix))
        ),
        st.integers(min_value=5000, max_value=5001).map(lambda n: "\u00e9" * n),
        # a good id with something after it (a field injection attempt)
        st.sampled_from(good).map(lambda part: prefix + part + "\nevent: pwned"),
    )


# --------------------------------------------------------------------------- subscribing
@BOUNDED
@given(data=st.data())
def test_any_resume_id_resumes_exactly_or_resets_once(history: History, data: Any) -> None:
    text = data.draw(id_texts(history), label="id")
    where = data.draw(st.sampled_from(["header", "query"]), label="where")
    if where == "query" and any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        where = "header"  # a URL cannot carry a lone surrogate; a header value can
    live = f"t:{len(history.events) + 1}"
    expected = _expected(history, text, live)
    history.reads.clear()

    req = request_with(text) if where == "header" else request_with(query=text)
    watcher = settled_reader(history.backend, req, SUBSCRIBED)
    broadcast(OTHER, "u:live")
    broadcast(SUBSCRIBED, live)
    got = watcher.take_until(live)
    watcher.stop()
    history.events.append((position_of(history, got[-1].id), live))

    sent = [fields_of(event) for event in got]
    assert [e["data"] if e["event"] != RESET_EVENT else "<reset>" for e in sent] == expected
    if expected[0] == "<reset>":
        assert json.loads(sent[0]["data"]) == {"topics": [SUBSCRIBED]}
    for event in sent:  # every id is this subscription's own
        assert event["id"].startswith(history.ids.prefix), event
    # Reads: only the subscribed topic, a page at a time, at most a few per resume.
    assert {topic for topic, _, _ in history.reads} <= {SUBSCRIBED}, history.reads
    assert all(len(page.result().messages) <= PAGE_SIZE for _, _, page in history.reads)
    assert len(history.reads) <= 3, history.reads


def _expected(history: History, text: str, live: str) -> list[str]:
    """What the client must get for ``text`` (then ``live``), from the documented id
    format only."""
    if not text:
        return [live]
    prefix = history.ids.prefix
    if len(text) <= MAX_ID_LENGTH and text.startswith(prefix):
        position = history.parse(text[len(prefix) :])
        if position is not None and history.covered(position):
            return [*history.after(position), live]
    return ["<reset>", live]


@BOUNDED
@given(
    topics=st.lists(
        st.one_of(
            st.text(max_size=130),
            st.sampled_from(["t", "user-42", "a.b:c_d-e", "x" * 128, "x" * 129]),
            st.integers(),
            st.none(),
            st.binary(max_size=4),
        ),
        max_size=70,
    )
)
def test_subscribe_takes_good_topics_or_raises_value_error(topics: list[Any]) -> None:
    with override_settings(FLOSSE={"BROADCAST_BACKEND": "memory", "PERSISTENCE": False}):
        good = all(
            isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", t) for t in topics
        )
        if not topics or not good or len(set(topics)) > 64:
            with pytest.raises(ValueError):
                subscribe(request_with(), *topics)
            return
        subscription = subscribe(request_with(), *topics)
        assert subscription.topics == tuple(sorted(set(topics)))
        subscription.close()


# --------------------------------------------------------------------------- publishing
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_EVENT_NAMES = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from([RESET_EVENT, "order", "a\nid: 1", "a\rdata: x", "ok\x00", ""]),
    st.integers(),
)
_TOPICS = st.one_of(
    st.text(max_size=130), st.sampled_from(["t", "user-42", "a.b:c_d-e", "t\n", " t"]), st.none()
)
_PAYLOADS = st.one_of(
    st.text(),
    _JSON,
    st.binary(max_size=8),
    st.sampled_from(["x" * 70_000, "\ud800", "a\r\nevent: pwned\r\ndata: x", object()]),
)


@pytest.mark.parametrize("call", ["broadcast", "abroadcast"])
@BOUNDED
@given(topic=_TOPICS, payload=_PAYLOADS, event=_EVENT_NAMES)
def test_any_publish_raises_value_error_or_arrives_as_one_clean_event(
    call: str, topic: Any, payload: Any, event: Any
) -> None:
    with override_settings(FLOSSE={"BROADCAST_BACKEND": "memory", "PERSISTENCE": False}):
        backend = get_backend()
        watched = (
            topic
            if isinstance(topic, str) and re.fullmatch(r"[\w.:-]{1,128}", topic, re.A)
            else "t"
        )
        watcher = settled_reader(backend, request_with(), watched)
        try:
            if call == "broadcast":
                broadcast(topic, payload, event=event)
            else:
                asyncio.run(abroadcast(topic, payload, event=event))
        except ValueError as exc:
            assert str(exc), "a ValueError must say what was wrong"
            published = False
        else:
            published = True
        broadcast(watched, "end", event="end")
        got = watcher.take_until("end")
        watcher.stop()
    assert len(got) == (2 if published else 1), got
    sent = [fields_of(event) for event in got]
    if published:
        assert topic == watched
        assert sent[0]["event"] == (event or "message")
        if isinstance(payload, str):
            assert sent[0]["data"] == payload.replace("\r\n", "\n").replace("\r", "\n")
        else:
            assert json.loads(sent[0]["data"]) == payload


# --------------------------------------------------------------------------- regressions
@pytest.mark.parametrize("part", ["\u00b2", "\u2070", "\u0663", "\uff11", "1\u00b2"])
def test_a_database_id_with_non_ascii_digits_resets(history: History, part: str) -> None:
    """The database backend read positions with ``str.isdigit()``: "²" and "⁰" crashed the
    subscription (``int()`` refuses them) and "٣" (Arabic-Indic 3) resumed as position 3."""
    assert history.backend.parse_position(part) is None
    live = f"t:{len(history.events) + 1}"
    watcher = settled_reader(history.backend, request_with(history.ids.prefix + part), SUBSCRIBED)
    broadcast(SUBSCRIBED, live)
    got = watcher.take_until(live)
    watcher.stop()
    assert [event.event for event in got] == [RESET_EVENT, None]
