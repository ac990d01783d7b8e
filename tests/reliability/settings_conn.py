"""``tests.settings_server`` with persistent database connections (``CONN_MAX_AGE``).

With ``CONN_MAX_AGE`` Django keeps a thread's connection open after a request, and for a
stream the request lasts as long as the stream: unless django-flosse lets go of it, every
open stream holds a connection. The database hygiene tests run servers with this.
"""

from __future__ import annotations

from tests.settings_server import *  # noqa: F403
from tests.settings_server import DATABASES

DATABASES = {"default": {**DATABASES["default"], "CONN_MAX_AGE": 600}}
