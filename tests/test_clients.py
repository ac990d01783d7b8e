"""What is recorded about the client of a connection (streaming/_clients.py).

Headers are the client's to make up: every recorded value is cut to a bound, and the proxy
header is read only when the settings name it. Request doubles (0.2.0's own tests called
views with mocks shaped like a request) must still give a connection.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import weakref
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import RequestFactory, override_settings
from django.urls import resolve

from django_flosse.broadcasting import subscribe
from django_flosse.conf import get_config
from django_flosse.observing.registry import (
    Connection,
    _parsed_address,
    client_address,
    registry,
)
from django_flosse.streaming._clients import (
    MAX_HEADER_LENGTH,
    attach_to_request,
    client_ip,
    connection_for,
    connection_of,
)
from tests import views
from tests.support import subscribing
from tests.support.responses import close_response
from tests.support.subscribing import use_memory


def _opened_connection(request: Any) -> Connection:
    """Open ``obs.limited_sync`` for ``request`` and return its registry record."""
    response = views.obs_limited_sync(request)
    try:
        (connection,) = registry.live("obs.limited_sync")
        return connection
    finally:
        close_response(response)


def test_a_connection_records_who_and_what(rf: RequestFactory) -> None:
    request = rf.get(
        "/obs/limited-sync/",
        REMOTE_ADDR="192.0.2.10",
        HTTP_USER_AGENT="EventSource-test/1.0",
        HTTP_LAST_EVENT_ID="17",
    )
    request.resolver_match = resolve("/obs/limited-sync/")
    request.user = User(pk=42, username="carol")
    before = time.time()

    connection = _opened_connection(request)

    assert len(connection.id) >= 16
    assert connection.stream == "obs.limited_sync"
    assert connection.path == "/obs/limited-sync/"
    assert connection.route == "obs/limited-sync/"
    assert (connection.user_id, connection.username) == ("42", "carol")
    assert connection.client_ip == "192.0.2.10"
    assert connection.user_agent == "EventSource-test/1.0"
    assert connection.last_event_id == "17"
    assert connection.process == f"{socket.gethostname()}:{os.getpid()}"
    assert before - 1 <= connection.opened_at <= time.time()


def test_an_anonymous_connection_has_no_user(rf: RequestFactory) -> None:
    request = rf.get("/")
    request.user = AnonymousUser()
    connection = _opened_connection(request)
    assert (connection.user_id, connection.username) == (None, "")


@override_settings(FLOSSE={"CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR"})
def test_client_ip_from_the_trusted_proxy_header(rf: RequestFactory) -> None:
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.9, 10.0.0.1")
    assert _opened_connection(request).client_ip == "198.51.100.9"
    # Without the header, the proxy's own address is all there is.
    assert _opened_connection(rf.get("/", REMOTE_ADDR="10.0.0.1")).client_ip == "10.0.0.1"


def test_the_forwarded_header_is_ignored_unless_configured(rf: RequestFactory) -> None:
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.9")
    assert _opened_connection(request).client_ip == "10.0.0.1"


@override_settings(FLOSSE={"RECORD_CLIENT_IP": False, "CLIENT_IP_HEADER": "HTTP_X_REAL_IP"})
def test_client_ip_is_not_recorded_when_switched_off(rf: RequestFactory) -> None:
    request = rf.get("/", REMOTE_ADDR="192.0.2.10", HTTP_X_REAL_IP="198.51.100.9")
    assert _opened_connection(request).client_ip is None


# ------------------------------------------------------------------------ client_ip


@pytest.mark.parametrize(
    ("flosse", "meta", "expected"),
    [
        ({}, {"REMOTE_ADDR": "192.0.2.10"}, "192.0.2.10"),
        ({}, {}, None),
        ({}, {"REMOTE_ADDR": ""}, None),
        ({}, {"REMOTE_ADDR": "1" * 100}, None),  # not an address: nothing kept
        ({}, {"REMOTE_ADDR": "2001:DB8::1"}, "2001:db8::1"),
        (
            {"CLIENT_IP_HEADER": "HTTP_X_REAL_IP"},
            {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_REAL_IP": "198.51.100.9"},
            "198.51.100.9",
        ),
        (
            {"CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR"},
            {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "  198.51.100.9 ,10.0.0.2"},
            "198.51.100.9",
        ),
        (  # an empty first hop: the proxy's own address is all there is
            {"CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR"},
            {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": " , 198.51.100.9"},
            "10.0.0.1",
        ),
        (
            {"CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR"},
            {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "f" * 100},
            None,  # not the proxy's address either: the header named the client, badly
        ),
        ({"RECORD_CLIENT_IP": False}, {"REMOTE_ADDR": "192.0.2.10"}, None),
    ],
)
def test_client_ip(flosse: dict[str, Any], meta: dict[str, str], expected: str | None) -> None:
    with override_settings(FLOSSE=flosse):
        config = get_config()
    assert client_ip(SimpleNamespace(META=meta), config) == expected  # type: ignore[arg-type]


# ------------------------------------------------------------------- connection_for


def test_headers_are_cut_to_max_header_length(rf: RequestFactory) -> None:
    request = rf.get(
        "/", HTTP_USER_AGENT="a" * 5000, HTTP_LAST_EVENT_ID="7" * 5000, REMOTE_ADDR="192.0.2.1"
    )
    connection = connection_for(request, "clients.unit", None, get_config())
    assert MAX_HEADER_LENGTH == 512
    assert connection.user_agent == "a" * 512
    assert connection.last_event_id == "7" * 512


def test_each_connection_gets_its_own_id(rf: RequestFactory) -> None:
    ids = {connection_for(rf.get("/"), "clients.unit", None, get_config()).id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(connection_id) == 32 for connection_id in ids)  # the history's column
    # What the admin's terminate accepts (views._CONNECTION_ID), whatever makes the ids.
    assert all(set(connection_id) <= set("0123456789abcdef") for connection_id in ids)


def test_a_repeated_address_is_answered_like_a_new_one() -> None:
    """Addresses are parsed once and remembered (each connection asks): a remembered
    answer is the same as a fresh one, bad input included, and the memory is bounded."""
    for _ in range(3):
        assert client_address("2001:DB8::1") == "2001:db8::1"
        assert client_address("fe80::1%eth0") == "fe80::1"
        assert client_address("not an address") is None
        assert client_address("192.0.2.10") == "192.0.2.10"
    many = [f"10.0.{i // 256}.{i % 256}" for i in range(3000)]
    assert [client_address(a) for a in many] == many
    assert _parsed_address.cache_info().currsize <= 1024


@pytest.mark.parametrize(
    "user",
    [
        None,
        AnonymousUser(),
        User(pk=3, username="inactive", is_active=False),  # authenticated is about the login
        MagicMock(),  # is_authenticated is a MagicMock, not True: no user recorded
    ],
    ids=["none", "anonymous", "inactive", "mock"],
)
def test_the_user_is_recorded_only_when_authenticated(rf: RequestFactory, user: Any) -> None:
    connection = connection_for(rf.get("/"), "clients.unit", user, get_config())
    if isinstance(user, User):
        assert (connection.user_id, connection.username) == ("3", "inactive")
    else:
        assert (connection.user_id, connection.username) == (None, "")


def test_the_last_event_id_of_clients_that_cannot_set_the_header(rf: RequestFactory) -> None:
    """htmx's sse extension (and other clients) send it as ``?lastEventId=``; the header wins."""
    query_only = connection_for(rf.get("/s/?lastEventId=m1.ab.7"), "s", None, get_config())
    assert query_only.last_event_id == "m1.ab.7"
    both = rf.get("/s/?lastEventId=old", HTTP_LAST_EVENT_ID="new")
    assert connection_for(both, "s", None, get_config()).last_event_id == "new"


@pytest.mark.parametrize(
    "request_double",
    [MagicMock(), SimpleNamespace(), SimpleNamespace(META=None, path=None, resolver_match=None)],
    ids=["MagicMock", "bare object", "None everywhere"],
)
def test_request_doubles_give_an_empty_connection(request_double: Any) -> None:
    connection = connection_for(request_double, "clients.unit", None, get_config())
    assert (connection.stream, connection.path, connection.route) == ("clients.unit", "", "")
    assert (connection.client_ip, connection.user_agent, connection.last_event_id) == (None, "", "")
    assert connection.process == f"{socket.gethostname()}:{os.getpid()}"


def test_subscribe_finds_the_connection_of_its_request(rf: RequestFactory) -> None:
    request = rf.get("/s/")
    connection = Connection(id="c1", stream="clients.unit")
    attach_to_request(request, connection)
    assert connection_of(request) is connection
    assert connection_of(rf.get("/s/")) is None


def test_a_closed_connection_keeps_nothing_of_its_subscription(settings: Any) -> None:
    """A subscription holds its connection and the connection's close callback holds the
    subscription. Once the connection is closed the callback has run and goes: the
    subscription is freed when its stream lets it go, not at the next full collection of
    the finished request's cycle (which the connection, the request's attribute, is in)."""
    use_memory(settings)
    request = subscribing.request()
    connection = subscribing.opened_connection(request)
    subscription = subscribe(request, "clients.topic")
    assert connection_of(request) is connection and connection.close_callbacks()
    gone = weakref.ref(subscription)
    registry.close(connection, "cancelled")
    assert connection.close_callbacks() == ()  # they ran, once: nothing keeps them
    gc.disable()  # no collection: only references count
    try:
        del subscription
        assert gone() is None
        assert connection_of(request) is connection
    finally:
        gc.enable()


class _NoAttributes:
    __slots__ = ()


def test_a_request_double_that_takes_no_attributes_has_no_connection() -> None:
    double = _NoAttributes()
    attach_to_request(double, Connection(id="c2", stream="clients.unit"))  # type: ignore[arg-type]
    assert connection_of(double) is None  # type: ignore[arg-type]
