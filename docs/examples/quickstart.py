"""Quick start: a finite sync stream and an endless async one, with their URLs."""

import asyncio
import time

from django.urls import path
from django.utils import timezone

from django_flosse import sse_stream


@sse_stream(retry=2000)
def job_progress(request, job_id):
    """A finite job. Blocking calls are fine in a `def` view: it runs in its own thread."""
    for percent in range(0, 101, 25):
        yield ("progress", {"job": job_id, "percent": percent})
        time.sleep(0.5)  # stands in for real work
    yield ("done", {"job": job_id})  # tells the browser to close (see below)


@sse_stream
async def server_time(request):
    """An endless stream. It ends when the client goes away."""
    while True:
        yield ("time", {"now": timezone.now()})  # datetimes become ISO 8601 strings
        await asyncio.sleep(1)


urlpatterns = [
    path("jobs/<int:job_id>/progress/", job_progress, name="job-progress"),
    path("time/", server_time, name="server-time"),
]
