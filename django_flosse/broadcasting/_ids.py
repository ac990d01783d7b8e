"""Resume ids: where a subscriber is in each of its topics, as one opaque string.

An id reads ``<backend tag>.<topics digest>.<position>[.<position>...]``, one position per
topic in sorted order. The tag names the backend and, where a backend can lose its
history (a Redis restarted without persistence, a memory backend's process), the life of
that history: an id from another life cannot be placed. The digest is a keyed hash of the
subscription's topics (Django's ``salted_hmac``): an id of another subscription does not
match it, and it tells a client nothing about topics it could use.

A subscription to one topic gives every subscriber the same id for the same event, so
that event's bytes are shared by all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.utils.crypto import salted_hmac

__all__ = ["MAX_ID_LENGTH", "IdFormat"]

#: Longest id a client may send back; anything longer cannot be ours.
MAX_ID_LENGTH = 4096

_SALT = "django_flosse.broadcast.topics"


class IdFormat:
    """The ids of one subscription (its backend's tag and its topics)."""

    def __init__(
        self,
        tag: str,
        topics: Sequence[str],
        format_position: Callable[[Any], str],
        parse_position: Callable[[str], Any],
    ) -> None:
        digest = salted_hmac(_SALT, "\n".join(topics), algorithm="sha256").hexdigest()[:12]
        self.tag = tag
        self.prefix = f"{tag}.{digest}."
        self.topics = tuple(topics)
        self._format = format_position
        self._parse = parse_position

    def format(self, positions: dict[str, Any]) -> str:
        fmt = self._format
        return self.prefix + ".".join([fmt(positions[topic]) for topic in self.topics])

    def parse(self, text: str) -> dict[str, Any] | None:
        """The positions ``text`` names, or ``None`` if it is not an id of this
        subscription on this backend (malformed, made up, another subscription's)."""
        if len(text) > MAX_ID_LENGTH or not text.startswith(self.prefix):
            return None
        parts = text[len(self.prefix) :].split(".")
        if len(parts) != len(self.topics):
            return None
        positions = {}
        for topic, part in zip(self.topics, parts, strict=True):
            position = self._parse(part)
            if position is None:
                return None
            positions[topic] = position
        return positions
