"""Type-checked by tests/test_typing.py: decorated views are views for mypy --strict."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest
from django.urls import path

from django_flosse import sse_stream


@sse_stream
def a(request: HttpRequest) -> Iterator[str]:
    yield "x"


@sse_stream(retry=1)
async def b(request: HttpRequest) -> AsyncIterator[str]:
    yield "x"


async def use(r: HttpRequest) -> int:
    return a(r).status_code + (await b(r)).status_code


urlpatterns = [path("a/", a), path("b/", b)]
