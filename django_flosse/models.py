"""Connection history: one row per SSE connection, written off the hot path.

Rows are written in batches by each process's history writer (``observing._history``); the
admin dashboard reads them to see every process and host of the deployment.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from . import reasons

__all__ = ["BroadcastMessage", "BroadcastTopic", "StreamActivity", "StreamConnection"]

CLOSE_REASON_CHOICES = [(reason, reason) for reason in reasons.CLOSE_REASONS]


class StreamConnection(models.Model):
    connection_id = models.CharField(_("connection id"), max_length=32, unique=True)
    stream = models.CharField(_("stream"), max_length=200)
    path = models.CharField(_("path"), max_length=500, blank=True)
    route = models.CharField(_("route"), max_length=500, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    username = models.CharField(_("username"), max_length=150, blank=True)
    client_ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    user_agent = models.CharField(_("user agent"), max_length=512, blank=True)
    process = models.CharField(_("process"), max_length=255, help_text=_("host:pid"))
    opened_at = models.DateTimeField(_("opened"))
    closed_at = models.DateTimeField(_("closed"), null=True, blank=True)
    last_seen_at = models.DateTimeField(
        _("last seen"), help_text=_("Refreshed by the owning process while the stream is open.")
    )
    events_sent = models.BigIntegerField(_("events sent"), default=0)
    bytes_sent = models.BigIntegerField(_("bytes sent"), default=0)
    last_event_at = models.DateTimeField(_("last event"), null=True, blank=True)
    close_reason = models.CharField(
        _("close reason"), max_length=16, choices=CLOSE_REASON_CHOICES, blank=True
    )
    last_event_id = models.CharField(_("Last-Event-ID"), max_length=512, blank=True)
    error_id = models.CharField(_("error id"), max_length=16, blank=True)
    topics = models.TextField(
        _("topics"), blank=True, help_text=_("Broadcast topics it subscribed to, space-separated.")
    )
    stop_requested = models.CharField(
        _("stop requested"),
        max_length=16,
        choices=CLOSE_REASON_CHOICES,
        blank=True,
        help_text=_("Set by the admin; the owning process ends the stream with this reason."),
    )

    class Meta:
        verbose_name = _("stream connection")
        verbose_name_plural = _("stream connections")
        ordering = ["-opened_at"]
        permissions = [("terminate_streamconnection", _("Can terminate stream connections"))]
        indexes = [
            models.Index(fields=["stream", "-opened_at"], name="flosse_stream_opened"),
            models.Index(fields=["closed_at", "process"], name="flosse_closed_process"),
            models.Index(fields=["close_reason", "-opened_at"], name="flosse_reason_opened"),
            models.Index(fields=["-opened_at"], name="flosse_opened"),
        ]

    def __str__(self) -> str:
        state = self.close_reason or "open"
        return f"{self.stream} {self.connection_id[:8]} ({state})"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


class StreamActivity(models.Model):
    """Opens, closes and open connections of one stream in one process during one bucket of
    time (``observing._activity``): what the dashboard counts for the other processes.

    Written by each process's history writer, read by the dashboard of every process, and
    kept for a little more than the dashboard's window: a few rows per process and stream,
    whatever the number of connections (the history table holds one row per connection).
    """

    process = models.CharField(_("process"), max_length=255, help_text=_("host:pid"))
    stream = models.CharField(_("stream"), max_length=200)
    #: Epoch seconds of the bucket's start (``observing._activity.BUCKET`` seconds long).
    bucket = models.BigIntegerField(_("bucket"))
    opened = models.IntegerField(_("opened"), default=0)
    cancelled = models.IntegerField(_("cancelled"), default=0)
    errors = models.IntegerField(_("errors"), default=0)
    active = models.IntegerField(_("open connections"), default=0)
    #: The process's running totals for the stream when the row was written (rates).
    events_total = models.BigIntegerField(_("events sent"), default=0)
    bytes_total = models.BigIntegerField(_("bytes sent"), default=0)

    class Meta:
        verbose_name = _("stream activity")
        verbose_name_plural = _("stream activity")
        ordering = ["-bucket"]
        constraints = [
            models.UniqueConstraint(
                fields=["process", "stream", "bucket"], name="flosse_activity_bucket"
            )
        ]
        indexes = [models.Index(fields=["bucket"], name="flosse_activity_time")]

    def __str__(self) -> str:
        return f"{self.stream} {self.process} @{self.bucket}"


class BroadcastTopic(models.Model):
    """The position of a topic's last event (the ``database`` broadcast backend).

    Publishing updates this row first, in the transaction that inserts the event: the row
    lock orders publishers of one topic, so positions commit in order and a reader that has
    seen position 12 can never miss a late 11.
    """

    topic = models.CharField(_("topic"), max_length=128, primary_key=True)
    position = models.BigIntegerField(_("position"), default=0)

    class Meta:
        verbose_name = _("broadcast topic")
        verbose_name_plural = _("broadcast topics")

    def __str__(self) -> str:
        return f"{self.topic} @{self.position}"


class BroadcastMessage(models.Model):
    """One published broadcast event, kept as history for resumes and catch-up."""

    topic = models.CharField(_("topic"), max_length=128)
    position = models.BigIntegerField(_("position"))
    #: The encoded event (``event:`` and ``data:`` lines), sent as is after an ``id:`` line.
    body = models.TextField(_("body"))
    #: ``time.time()`` of the publishing call (for the lag metric and the age trim).
    published_at = models.FloatField(_("published at"))

    class Meta:
        verbose_name = _("broadcast message")
        verbose_name_plural = _("broadcast messages")
        constraints = [
            models.UniqueConstraint(fields=["topic", "position"], name="flosse_broadcast_position")
        ]
        indexes = [models.Index(fields=["published_at"], name="flosse_broadcast_published")]

    def __str__(self) -> str:
        return f"{self.topic} #{self.position}"
