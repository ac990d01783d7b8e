"""Servers and publishers of ``test_broadcast_cluster.py`` on the SQLite test database.

``tests.settings_server`` (logs on stderr) with a short broadcast history, so that a test
can trim a topic (the history keeps the last 50 events of a topic once it reaches 100).
"""

from __future__ import annotations

from tests.settings_server import *  # noqa: F403
from tests.settings_server import FLOSSE

FLOSSE = {**FLOSSE, "BROADCAST_BACKEND": "database", "BROADCAST_HISTORY": 50}
