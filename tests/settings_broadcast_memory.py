"""The real servers of ``tests/test_broadcast_servers.py``: ``tests.settings_server`` with the
``memory`` broadcast backend (one process each, so their publisher is a view of their own)."""

from __future__ import annotations

from tests.settings_server import *  # noqa: F403
from tests.settings_server import FLOSSE

FLOSSE = {**FLOSSE, "BROADCAST_BACKEND": "memory"}
