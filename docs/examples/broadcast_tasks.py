"""Publishing from a task queue worker and from async code (docs/broadcast.md).

A task is a plain function: with Celery put ``@shared_task`` above it, with RQ enqueue it as
it is. The worker needs the project's settings (it has them), nothing else.
"""

import json

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from django_flosse import abroadcast, broadcast


def export_finished(user_id, export_id):
    broadcast(
        f"user-{user_id}",
        {"export": export_id, "url": f"/exports/{export_id}/"},
        event="export-ready",
    )


@csrf_exempt
async def payment_webhook(request):
    """An async view: ``abroadcast`` does not block the event loop."""
    payload = json.loads(request.body)
    await abroadcast("orders", {"id": payload["order"], "status": "paid"}, event="order")
    return HttpResponse(status=204)
