"""``tests.settings_server`` with ``GZipMiddleware`` first in ``MIDDLEWARE``.

Used by the servers of ``tests/test_servers.py`` that check a stream stays incremental
behind GZip (``DJANGO_SETTINGS_MODULE=tests.settings_gzip``).
"""

from __future__ import annotations

from tests.settings_server import *  # noqa: F403
from tests.settings_server import MIDDLEWARE

MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *MIDDLEWARE]
