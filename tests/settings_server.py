"""Settings for the real servers of ``tests/test_servers.py``: ``tests.settings`` plus logging.

``tests.settings`` has no ``LOGGING``, so the ``django_flosse`` logger's INFO records
(``sse.connection.opened`` / ``sse.connection.closed``) would be dropped (only WARNING and up
reach stderr through logging's last-resort handler). The server tests read those lines from
the server's stderr, so servers started with ``DJANGO_SETTINGS_MODULE=tests.settings_server``
print them.
"""

from __future__ import annotations

from tests.settings import *  # noqa: F403

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        }
    },
    "loggers": {
        "django_flosse": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
