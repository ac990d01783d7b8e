"""Settings for the server a real Prometheus scrapes (``tests/test_monitoring.py``).

``tests.settings`` with the ``memory`` broadcast backend: the server is one process and its
own publisher, so every broadcast metric gets samples without a database or Redis.
"""

from __future__ import annotations

from tests.settings import *  # noqa: F403
from tests.settings import FLOSSE

FLOSSE = {**FLOSSE, "BROADCAST_BACKEND": "memory"}
