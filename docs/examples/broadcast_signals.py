"""Publishing from a ``post_save`` signal handler (docs/broadcast.md).

``comments`` stands for your app: a ``Comment`` model with an ``article`` foreign key.
"""

from django.apps import AppConfig
from django.db.models.signals import post_save

from django_flosse import broadcast


def comment_saved(sender, instance, created, **kwargs):
    """Tell everyone reading the article. Inside the save's transaction, the event waits
    for the commit, so the page that fetches the comment finds it."""
    if created:
        broadcast(
            f"article-{instance.article_id}",
            {"id": instance.pk, "author": instance.author_name},
            event="comment",
        )


class CommentsConfig(AppConfig):
    name = "comments"

    def ready(self):
        post_save.connect(
            comment_saved, sender=self.get_model("Comment"), dispatch_uid="comments.broadcast"
        )
