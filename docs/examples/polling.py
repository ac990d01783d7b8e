"""Polling: check a value every second and send it when it changes.

A worker (Celery, RQ, a management command) writes a job's progress to the cache; the
stream reads it with the cache's async API and sleeps with ``asyncio.sleep``, which lets
the event loop serve every other connection in the meantime.
"""

import asyncio

from django.core.cache import cache

from django_flosse import sse_stream

POLL_INTERVAL = 1.0  # seconds


@sse_stream
async def job_status(request, job_id):
    last = None
    while True:
        progress = await cache.aget(f"job:{job_id}:progress", 0)
        if progress != last:
            yield ("progress", {"job": job_id, "percent": progress})
            last = progress
        if progress >= 100:
            yield ("done", {"job": job_id})
            return
        await asyncio.sleep(POLL_INTERVAL)
