"""Blocking work in an async view: move it off the event loop.

Every ``async def`` stream of a process shares one event loop. A blocking call inside one
(``time.sleep``, ``requests.get``, a sync ORM query, reading a big file) stops all of them
until it returns, heartbeats included.
"""

import asyncio
import hashlib

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from django_flosse import sse_stream


def checksum(payload):
    """CPU-bound or blocking work: fine in a thread, not on the event loop."""
    return hashlib.sha256(payload).hexdigest()


@sse_stream
async def user_directory(request):
    User = get_user_model()
    # The ORM's async API: no thread per row, no SynchronousOnlyOperation.
    count = await User.objects.acount()
    yield ("count", {"users": count})
    async for user in User.objects.order_by("pk").values("pk", "username")[:100]:
        yield ("user", user)

    # Blocking library calls: run them in a thread.
    digest = await asyncio.to_thread(checksum, b"report body")
    yield ("checksum", {"sha256": digest})

    # Sync ORM code you already have: sync_to_async runs it where Django expects.
    usernames = await sync_to_async(
        lambda: list(User.objects.filter(is_staff=True).values_list("username", flat=True))
    )()
    yield ("staff", usernames)
