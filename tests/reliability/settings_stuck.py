"""Servers of ``test_broadcast_stuck.py``: ``settings_storm`` with a small subscriber buffer
(a stuck subscriber overflows after 100 events) and a 6-second send timeout."""

from __future__ import annotations

from tests.reliability.settings_storm import *  # noqa: F403
from tests.reliability.settings_storm import FLOSSE

FLOSSE = {**FLOSSE, "BROADCAST_BUFFER": 100, "SEND_TIMEOUT": 6.0}
