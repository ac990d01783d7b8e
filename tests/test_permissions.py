"""Permission classes, and loading the user and checking them per request (permissions.py).

Through the decorator (403 before anything streams, the async client, thread hops of a real
request) they are tested in test_decorators.py; here ``check`` and ``aprepare`` directly.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest
from django.test import AsyncRequestFactory, RequestFactory

from django_flosse.permissions import (
    AllowAny,
    BaseSSEPermission,
    IsAdminUser,
    IsAuthenticated,
    aprepare,
    check,
)

ANONYMOUS = AnonymousUser()
MEMBER = User(pk=1, username="member")
STAFF = User(pk=2, username="staff", is_staff=True)


class Deny(BaseSSEPermission):
    def has_permission(self, request: HttpRequest) -> bool:
        return False


class AsyncStaff(BaseSSEPermission):
    async def has_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_staff)


class Recording(BaseSSEPermission):
    """A sync class (it might query the database): records the thread it ran on."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.threads: list[int] = []

    def has_permission(self, request: HttpRequest) -> bool:
        self.threads.append(threading.get_ident())
        return self.allow


def request_for(user: Any, factory: Any = None) -> HttpRequest:
    request: HttpRequest = (factory or RequestFactory()).get("/")
    request.user = user
    return request


@pytest.mark.parametrize(
    ("classes", "user", "allowed"),
    [
        ([], ANONYMOUS, True),
        ([AllowAny], ANONYMOUS, True),
        ([BaseSSEPermission], ANONYMOUS, True),
        ([IsAuthenticated], ANONYMOUS, False),
        ([IsAuthenticated], MEMBER, True),
        ([IsAuthenticated], None, False),  # no user at all (no auth middleware)
        ([IsAdminUser], MEMBER, False),
        ([IsAdminUser], STAFF, True),
        ([IsAdminUser], User(pk=3, is_staff=True, is_active=True), True),
        ([IsAuthenticated, IsAdminUser], MEMBER, False),  # every class must pass
        ([AllowAny, Deny], STAFF, False),
        ([AsyncStaff], STAFF, True),  # an async class on the sync path runs to the end
        ([AsyncStaff], MEMBER, False),
        ([IsAuthenticated()], MEMBER, True),  # instances work as well as classes
    ],
)
def test_check(classes: list[Any], user: Any, allowed: bool) -> None:
    assert check(request_for(user), classes) is allowed


def test_a_request_without_a_user_attribute_is_not_authenticated() -> None:
    request = SimpleNamespace()  # 0.2.0's tests called views with mocks like this
    assert check(request, [IsAuthenticated]) is False  # type: ignore[arg-type]
    assert check(request, [AllowAny]) is True  # type: ignore[arg-type]


def test_check_stops_at_the_first_class_that_says_no() -> None:
    later = Recording()
    assert check(request_for(STAFF), [Deny, later]) is False
    assert later.threads == []


# ----------------------------------------------------------------------------- aprepare


def async_request(user: Any, session_key: str | None = None) -> HttpRequest:
    """A request as Django's auth middleware leaves it: a lazy user and ``auser()``."""
    request = AsyncRequestFactory().get("/")
    request.session = SimpleNamespace(session_key=session_key)  # type: ignore[assignment]
    loads: list[str] = []

    class LazyUser:
        """Like Django's SimpleLazyObject: the first touch loads it (a query)."""

        def __getattr__(self, name: str) -> Any:
            if not loads:
                loads.append(threading.current_thread().name)
            return getattr(user, name)

    async def auser() -> Any:
        return user

    request.user = LazyUser()  # type: ignore[assignment]
    request.auser = auser  # type: ignore[attr-defined]
    request.loads = loads  # type: ignore[attr-defined]
    return request


async def test_an_anonymous_visitor_is_prepared_without_a_hop(hops: list[str]) -> None:
    request = async_request(ANONYMOUS)
    assert await aprepare(request, [IsAuthenticated]) == (ANONYMOUS, False)
    assert hops == []
    assert request.user is ANONYMOUS  # the loaded user, not the lazy object
    assert request.loads == []  # type: ignore[attr-defined]


async def test_a_session_user_is_loaded_in_one_hop(hops: list[str]) -> None:
    request = async_request(STAFF, session_key="s3ss10n")
    user, allowed = await aprepare(request, [IsAuthenticated, AsyncStaff, IsAdminUser])
    assert allowed is True
    assert user.username == "staff"
    assert hops == ["_prepare_in_thread"]  # loading and releasing together
    (loaded_on,) = request.loads  # type: ignore[attr-defined]
    assert loaded_on != threading.current_thread().name  # off the event loop


async def test_sync_classes_run_in_the_same_single_hop(hops: list[str]) -> None:
    first, second = Recording(), Recording()
    loop_thread = threading.get_ident()
    request = async_request(MEMBER, session_key="s3ss10n")
    assert await aprepare(request, [first, IsAuthenticated, second]) == (request.user, True)
    assert hops == ["_prepare_in_thread"]
    assert first.threads == second.threads and first.threads[0] != loop_thread


async def test_a_sync_class_without_a_session_still_runs_off_the_loop(hops: list[str]) -> None:
    permission = Recording(allow=False)
    request = async_request(ANONYMOUS)
    _user, allowed = await aprepare(request, [permission, AsyncStaff])
    assert allowed is False
    assert permission.threads[0] != threading.get_ident()
    assert hops == ["_prepare_in_thread"]


@pytest.mark.parametrize(
    ("classes", "user", "allowed"),
    [
        ([AsyncStaff], STAFF, True),
        ([AsyncStaff], MEMBER, False),
        ([IsAdminUser], STAFF, True),
        ([IsAuthenticated, AsyncStaff], ANONYMOUS, False),
        ([], MEMBER, True),
    ],
)
async def test_loop_safe_classes_run_without_a_hop(
    hops: list[str], classes: list[Any], user: Any, allowed: bool
) -> None:
    assert await aprepare(async_request(user), classes) == (user, allowed)
    assert hops == []


async def test_a_request_double_without_auser_keeps_its_user(hops: list[str]) -> None:
    request = request_for(MEMBER, AsyncRequestFactory())  # no auser(): no auth middleware
    assert await aprepare(request, [IsAuthenticated]) == (MEMBER, True)
    assert hops == []
