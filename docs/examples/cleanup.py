"""Cleanup on cancellation: the documented idiom and the 0.2.0-era variant."""

import asyncio
import logging

from django_flosse import sse_stream

logger = logging.getLogger(__name__)
open_feeds = set()  # stands in for anything that must be released: a lock, a row, a socket


@sse_stream
async def ticker(request):
    feed_id = id(request)
    open_feeds.add(feed_id)
    try:
        n = 0
        while True:
            yield ("tick", {"n": n})
            n += 1
            await asyncio.sleep(1)
    except asyncio.CancelledError:
        logger.info("client left the ticker")
        raise  # the idiom: let the cancellation finish its job
    finally:
        open_feeds.discard(feed_id)  # runs on every way out: finished, failed or cancelled


@sse_stream
async def ticker_returns(request):
    """Catching CancelledError and returning also ends as `cancelled` (0.2.0's docs did this)."""
    n = 0
    try:
        while True:
            yield ("tick", {"n": n})
            n += 1
            await asyncio.sleep(1)
    except asyncio.CancelledError:
        logger.info("client left the ticker after %d ticks", n)
        return
