"""The demo's JSON console logging, shared by settings.py and gunicorn.conf.py.

structlog renders every record as one JSON object per line: django-flosse's own events
(``sse.connection.*``, ``sse.stream.error``) and any stdlib logger's records (Django,
uvicorn, gunicorn) alike. structlog's events reach the stdlib handler through
``ProcessorFormatter.wrap_for_formatter``; stdlib records go through ``foreign_pre_chain``.
"""

from __future__ import annotations

from typing import Any

import structlog

#: Added to every record, from structlog or from the stdlib.
SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

#: A ``logging.config.dictConfig`` formatter entry.
JSON_FORMATTER: dict[str, Any] = {
    "()": structlog.stdlib.ProcessorFormatter,
    "foreign_pre_chain": SHARED_PROCESSORS,
    "processors": [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,  # the traceback as an "exception" string
        structlog.processors.JSONRenderer(),
    ],
}


def configure_structlog() -> None:
    """Send structlog's events to stdlib logging; ``LOGGING`` decides where they go.

    Once structlog is configured, django-flosse logs through it (see django_flosse.observing.log).
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
