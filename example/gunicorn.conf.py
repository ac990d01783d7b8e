"""gunicorn settings of ``make demo-wsgi``: its own log lines in JSON, like the rest.

Django's ``LOGGING`` (demo/settings.py) applies in the worker once Django is set up; gunicorn's
own loggers (``gunicorn.error``, ``gunicorn.access``) are configured by gunicorn, from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo.logconf import JSON_FORMATTER

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": JSON_FORMATTER},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
