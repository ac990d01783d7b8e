"""Servers of ``test_broadcast_storm.py``: the ``database`` broadcast backend on the SQLite
test database, a history long enough for clients a few hundred events back, and the
storm's own views (a first-event clock, a query counter) on top of the test project's."""

from __future__ import annotations

from tests.settings_server import *  # noqa: F403
from tests.settings_server import FLOSSE

FLOSSE = {**FLOSSE, "BROADCAST_BACKEND": "database", "BROADCAST_HISTORY": 1000}
ROOT_URLCONF = "tests.reliability.urls_storm"
