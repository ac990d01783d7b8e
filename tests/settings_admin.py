"""Settings for servers of the multi-process history tests: persistence on, losses fast.

``tests.settings_server`` (logs on stderr) with the history written by every server.
``FLUSH_INTERVAL`` stays at its default (1 s), so terminate is measured as shipped;
``LOST_AFTER`` is short so that a killed server's rows become ``lost`` within seconds.
"""

from __future__ import annotations

import os

from tests.settings_server import *  # noqa: F403

FLOSSE = {
    "PERSISTENCE": True,
    "FLUSH_INTERVAL": float(os.environ.get("FLOSSE_FLUSH_INTERVAL", "1.0")),
    "LOST_AFTER": float(os.environ.get("FLOSSE_LOST_AFTER", "3.0")),
}
