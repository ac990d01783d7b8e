"""The one model of the demo: messages posted from the home page, read by the async feed."""

from __future__ import annotations

from django.db import models


class Message(models.Model):
    text = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.text
