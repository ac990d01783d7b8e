"""``settings_storm`` on the ``redis`` backend (the URL from ``FLOSSE_REDIS_URL``, which
the ``redis_server`` fixture's ``env()`` gives)."""

from __future__ import annotations

import os

from tests.reliability.settings_storm import *  # noqa: F403
from tests.reliability.settings_storm import FLOSSE

FLOSSE = {
    **FLOSSE,
    "BROADCAST_BACKEND": "redis",
    "BROADCAST_REDIS_URL": os.environ.get("FLOSSE_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
