import asyncio

from django.urls import path

from django_flosse import sse_stream


@sse_stream
async def clock(request):
    n = 0
    while True:
        yield ("tick", {"n": n})  # event "tick", data {"n": 0} as JSON
        n += 1
        await asyncio.sleep(1)


urlpatterns = [path("clock/", clock)]
