"""``tests.settings_server`` with the ``redis`` broadcast backend.

The server's URL comes from the environment (``FLOSSE_REDIS_URL``), which the
``redis_server`` fixture of ``tests/support/redis.py`` passes to the processes it starts.
"""

from __future__ import annotations

import os

from tests.settings_server import *  # noqa: F403
from tests.settings_server import FLOSSE

FLOSSE = {
    **FLOSSE,
    "BROADCAST_BACKEND": "redis",
    "BROADCAST_REDIS_URL": os.environ.get("FLOSSE_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
