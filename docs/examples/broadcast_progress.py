"""Publishing at once from inside a transaction: ``on_commit=False`` (docs/broadcast.md)."""

from django.db import transaction

from django_flosse import broadcast


def import_rows(import_id, rows):
    """Save ``rows`` (unsaved model instances) in one transaction, telling the page."""
    topic = f"import-{import_id}"
    with transaction.atomic():
        for done, row in enumerate(rows, start=1):
            row.save()
            # Progress must show while the transaction is still open: publish now,
            # independently of it (it stays published even if the import rolls back).
            broadcast(topic, {"done": done, "of": len(rows)}, event="progress", on_commit=False)
    broadcast(topic, {"rows": len(rows)}, event="done")  # after the commit
