"""Isolation: what a subscriber, its ids, the metrics and the dashboard reveal of topics.

- A subscriber only ever receives the topics its view subscribed: none of a topic whose
  name merely starts like one of its own (``user-1`` and ``user-10``), none of another
  subscription's, live or replayed, on the ``memory``, ``database`` and ``redis`` backends
  (a real ``redis-server``, from ``tests/support/redis.py``; skipped without it, failed in
  CI).
- Ids reveal nothing a client could use: no topic name, a digest keyed with the project's
  ``SECRET_KEY`` (another key, another digest), positions of its own topics only; an id
  of another subscription (even one naming a superset of its topics) or one forged with
  the wrong key gives ``flosse-reset``, which names only the subscription's own topics; so
  does an id of the same topics made by another backend (a ``database`` id sent to a
  ``redis`` stream and every other pairing).
- Topics never become metric labels: the metrics view, scraped after publishing to,
  subscribing to and resetting per-user topics, names none of them.
- Per-user topics are shown on the admin dashboard (its page and its feed) only to users
  who may view connections (active staff with the model's view or change permission).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from django_flosse import abroadcast, broadcast, subscribe
from django_flosse.broadcasting import RESET_EVENT
from django_flosse.broadcasting._ids import IdFormat
from django_flosse.broadcasting.backends import get_backend
from django_flosse.models import StreamConnection
from django_flosse.testing import collect_events, parse_events
from tests import views
from tests.support.redis import redis_server_fixture as redis_server_fixture  # the fixture
from tests.support.subscribing import MEMORY, Reader, datas, joined, request

pytestmark = pytest.mark.django_db(transaction=True)

#: Names that start like one another, or differ only in a separator.
TOPICS = ("user-1", "user-10", "user-1.x", "user-1:x", "a", "a.b", "a-b", "A")
BACKENDS = ("memory", "database", "redis")


def ids_of(*topics: str) -> IdFormat:
    backend = get_backend()
    names = tuple(sorted(set(topics)))
    return IdFormat(backend.tag, names, backend.format_position, backend.parse_position)


@contextmanager
def using(name: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The settings of backend ``name`` (``redis``: the session's server, emptied); its
    backend."""
    flosse = {**MEMORY, "BROADCAST_BACKEND": name}
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()
        flosse["BROADCAST_REDIS_URL"] = server.url
    with override_settings(FLOSSE=flosse):
        yield get_backend()


# --------------------------------------------------------------------------- delivery
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    with using(request.param, request) as made:
        yield made


def _run(backend: Any, subscriptions: list[tuple[str, ...]], published: list[str]) -> None:
    """Subscribe each of ``subscriptions``, publish to ``published`` (data: the topic),
    then a marker to each subscription's first topic: what each got must be exactly the
    events of its own topics, each topic's in order (the order across topics is not
    promised: the database backend's reader may hand a round's topics over in any order)."""
    readers = [Reader(subscribe(request(), *topics)) for topics in subscriptions]
    for topics in {t for s in subscriptions for t in s}:
        joined(backend, topics, count=sum(topics in s for s in subscriptions))
    for topic in published:
        broadcast(topic, topic)
    for i, topics in enumerate(subscriptions):
        broadcast(topics[0], f"end-{i}")

    def topic_of(data: str) -> str:
        return subscriptions[int(data[4:])][0] if data.startswith("end-") else data

    everything = [*published, *(f"end-{i}" for i in range(len(subscriptions)))]
    for reader, topics in zip(readers, subscriptions, strict=True):
        mine = [d for d in everything if topic_of(d) in topics]
        got = datas(reader.take(len(mine)))
        reader.stop()
        assert sorted(got) == sorted(mine), (topics, got)
        for topic in topics:
            in_topic = [d for d in got if topic_of(d) == topic]
            assert in_topic == [d for d in mine if topic_of(d) == topic], (topic, got)


def test_a_subscriber_receives_only_its_own_topics(backend: Any) -> None:
    subscriptions = [("user-1",), ("user-10", "a"), ("a.b",), ("user-1.x", "user-1:x", "A")]
    _run(backend, subscriptions, [*TOPICS, *reversed(TOPICS), "user-100", "a.b.c", "b"])


@hypothesis_settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    subscriptions=st.lists(
        st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True).map(tuple),
        min_size=1,
        max_size=4,
    ),
    published=st.lists(st.sampled_from(TOPICS), max_size=12),
)
def test_any_subscriptions_receive_only_their_own_topics(
    subscriptions: list[tuple[str, ...]], published: list[str]
) -> None:
    with override_settings(FLOSSE=MEMORY):
        _run(get_backend(), subscriptions, published)


# --------------------------------------------------------------------------- ids
def first_id(backend: Any, topic: str) -> str:
    """The id a subscriber of ``topic`` gets with the next event published to it."""
    reader = Reader(subscribe(request(), topic))
    joined(backend, topic)
    broadcast(topic, "one")
    (event,) = reader.take(1)
    reader.stop()
    return event.id


def test_an_id_names_no_topic_and_needs_the_secret_key(backend: Any) -> None:
    event_id = first_id(backend, "user-42")
    tag, digest, position = event_id.split(".")
    assert tag == backend.tag and backend.parse_position(position) > backend.zero
    assert event_id == ids_of("user-42").format({"user-42": backend.parse_position(position)})
    assert len(digest) == 12 and set(digest) <= set("0123456789abcdef")
    assert "user" not in event_id
    with override_settings(SECRET_KEY="another project's key"):
        assert ids_of("user-42").prefix != f"{tag}.{digest}."
    assert ids_of("user-43").prefix != f"{tag}.{digest}."


@pytest.mark.parametrize(
    "forged",
    [
        "other-subscription",  # a real id of "secret"
        "superset",  # a real id of ("t", "secret"): more topics than the view subscribed
        "unkeyed",  # the digest made without the key
    ],
)
def test_an_id_of_another_subscription_gets_a_reset_naming_only_its_own_topics(
    backend: Any, forged: str
) -> None:
    for i in range(3):
        broadcast("secret", f"secret-{i}")
        broadcast("t", f"t-{i}")
    # Each from the position before the first event: accepted, it would replay them all.
    zero = backend.zero
    if forged == "other-subscription":
        text = ids_of("secret").format({"secret": zero})
    elif forged == "superset":
        text = ids_of("t", "secret").format({"t": zero, "secret": zero})
    else:
        unkeyed = hashlib.sha256(b"t").hexdigest()[:12]
        text = f"{backend.tag}.{unkeyed}.{backend.format_position(zero)}"
    assert_resets_to_live(backend, text)


def assert_resets_to_live(backend: Any, text: str) -> None:
    """A subscriber of ``t`` sending ``text`` gets one reset naming ``t``, then live events
    only (none of the history before it, none of another topic), with ``t``'s ids."""
    reader = Reader(subscribe(request(text), "t"))
    joined(backend, "t")
    broadcast("t", "live")
    got = reader.take_until("live")
    reader.stop()
    assert datas(got) == ["<reset>", "live"]
    assert got[0].event == RESET_EVENT and got[0].data == '{"topics": ["t"]}'
    assert all(e.id.startswith(ids_of("t").prefix) and e.id.count(".") == 2 for e in got)


@pytest.mark.parametrize(
    ("source", "target"),
    [(a, b) for a in BACKENDS for b in BACKENDS if a != b],
)
def test_an_id_of_another_backend_gets_a_reset(
    request: pytest.FixtureRequest, source: str, target: str
) -> None:
    """A real id of the same topic (so the same digest) from another backend: a client
    moved between deployments, or a backend changed under it."""
    with using(source, request) as other:
        foreign = first_id(other, "t")
    with using(target, request) as backend:
        for i in range(3):
            broadcast("t", f"t-{i}")
        assert not foreign.startswith(ids_of("t").prefix)
        assert_resets_to_live(backend, foreign)


# --------------------------------------------------------------------------- metrics
def test_topics_never_become_metric_labels(backend: Any, admin_client: Client) -> None:
    secret = "user-qzx-private"

    async def stream() -> list[str]:
        """A client back with a made-up id (a reset), then a live event."""
        resumed = RequestFactory().get("/", headers={"Last-Event-ID": "made-up"})
        response = await views.broadcast_async(resumed, topics=secret)
        frames = response.streaming_content  # type: ignore[attr-defined]
        body = b""
        try:
            while RESET_EVENT.encode() not in body:
                body += await asyncio.wait_for(anext(frames), 10)
            while not backend.subscribers(secret):
                await asyncio.sleep(0.01)
            await abroadcast(secret, "hello")
            while b"hello" not in body:
                body += await asyncio.wait_for(anext(frames), 10)
        finally:
            await frames.aclose()
        return [e.event for e in parse_events(body)]

    events = asyncio.run(stream())
    assert events == [RESET_EVENT, "message"]
    scraped = admin_client.get(reverse("flosse:metrics")).content.decode()
    assert "flosse_broadcast_delivered_total" in scraped
    assert secret not in scraped
    labels = {
        (name, value)
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        for name, value in sample.labels.items()
    }
    assert labels and not any(name == "topic" or "qzx" in value for name, value in labels)


# --------------------------------------------------------------------------- dashboard
@pytest.fixture
def per_user_topics() -> StreamConnection:
    now = timezone.now()
    return StreamConnection.objects.create(
        connection_id="c" * 32,
        stream="tests.broadcast_async",
        process="elsewhere.example:1",
        opened_at=now,
        last_seen_at=now,
        topics="user-7-inbox user-7-orders",
        username="seven",
    )


def _user(name: str, *, staff: bool, perms: tuple[str, ...] = ()) -> Client:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("anonymous", False),
        ("user with the view permission, not staff", False),
        ("staff without the view permission", False),
        ("staff with the view permission", True),
        ("staff with the change permission", True),
    ],
)
def test_per_user_topics_show_on_the_dashboard_only_to_who_may_view_connections(
    backend: Any, per_user_topics: StreamConnection, who: str, allowed: bool
) -> None:
    """On every backend: the dashboard's topics panel asks the backend about topics."""
    clients = {
        "anonymous": Client,
        "user with the view permission, not staff": lambda: _user(
            "u1", staff=False, perms=("view_streamconnection",)
        ),
        "staff without the view permission": lambda: _user("u2", staff=True),
        "staff with the view permission": lambda: _user(
            "u3", staff=True, perms=("view_streamconnection",)
        ),
        "staff with the change permission": lambda: _user(
            "u4", staff=True, perms=("change_streamconnection",)
        ),
    }
    client = clients[who]()
    page = client.get(reverse("admin:django_flosse_dashboard"))
    feed = client.get(reverse("admin:django_flosse_dashboard_stream"))
    change = client.get(
        reverse("admin:django_flosse_streamconnection_change", args=[per_user_topics.pk])
    )
    if not allowed:
        for response in (page, feed, change):
            assert response.status_code in (302, 403), response.status_code
            assert not response.streaming and b"user-7" not in response.content
        return
    assert page.status_code == feed.status_code == change.status_code == 200
    (snapshot,) = collect_events(feed, max_events=1)
    assert "user-7-inbox user-7-orders" in [r.get("topics") for r in snapshot.json()["rows"]]
    panel = snapshot.json()["topics"]  # the topics panel, with what the backend knows
    assert panel["backend"] == backend.name
    assert {"user-7-inbox", "user-7-orders"} <= {row["topic"] for row in panel["rows"]}
    assert b"user-7-inbox" in change.content
