"""Broadcast: publish from a view, subscribe in an async and a sync view (docs/broadcast.md)."""

from django.db import transaction
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.http import require_POST

from django_flosse import broadcast, sse_stream, subscribe
from django_flosse.permissions import IsAuthenticated


@sse_stream(retry=2000, permission_classes=[IsAuthenticated])
async def order_feed(request):
    """Every order event, and the events of this user's own orders."""
    user = await request.auser()  # never request.user on the event loop
    async for event in subscribe(request, "orders", f"user-{user.pk}"):
        yield event  # its id is what the browser sends back to resume


@sse_stream(retry=2000, permission_classes=[IsAuthenticated])
def order_feed_sync(request):
    """The same feed as a ``def`` view: ``for`` instead of ``async for``."""
    yield from subscribe(request, "orders", f"user-{request.user.pk}")


@require_POST
def pay_order(request, order_id):
    with transaction.atomic():
        # ... mark the order paid in the database ...
        broadcast("orders", {"id": order_id, "status": "paid"}, event="order")
        broadcast(f"user-{request.user.pk}", {"id": order_id}, event="receipt")
    # Both events are published here, once the transaction has committed
    # (and never if it rolled back): a page never hears of a row it cannot read.
    return HttpResponse(status=204)


urlpatterns = [
    path("orders/feed/", order_feed, name="order-feed"),
    path("orders/<int:order_id>/pay/", pay_order, name="pay-order"),
]
