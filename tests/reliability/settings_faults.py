"""Servers of the broadcast fault tests: an engine chosen by the environment, losses fast.

``tests.settings_server`` (logs on stderr, history written by every server) with:

- ``FLOSSE_FAULTS_BACKEND=database``: the PostgreSQL cluster of ``tests/support/postgres.py``
  (``FLOSSE_PG_*``) holds everything, the broadcast history and the connection history;
- ``FLOSSE_FAULTS_BACKEND=redis``: Redis (``FLOSSE_REDIS_URL``) for broadcast, the SQLite
  test database for the connection history, or with ``FLOSSE_FAULTS_HISTORY=postgres`` the
  PostgreSQL cluster (the soak's Redis cycles: a thousand streams' rows from two workers);
- ``LOST_AFTER`` of 3 seconds, so that a killed worker's rows become ``lost`` within seconds.
"""

from __future__ import annotations

import os

from tests import settings_pg
from tests.settings_server import *  # noqa: F403

_BACKEND = os.environ.get("FLOSSE_FAULTS_BACKEND", "database")

if _BACKEND == "database" or os.environ.get("FLOSSE_FAULTS_HISTORY") == "postgres":
    DATABASES = settings_pg.DATABASES

FLOSSE = {
    "PERSISTENCE": True,
    "FLUSH_INTERVAL": 1.0,
    "LOST_AFTER": 3.0,
    "BROADCAST_BACKEND": _BACKEND,
    "BROADCAST_REDIS_URL": os.environ.get("FLOSSE_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
