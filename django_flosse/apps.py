"""The app config: installing ``"django_flosse"`` turns on observability and the admin.

``ready()`` registers the system checks, chains the shutdown signal handlers, and wires the
registry's observers (metrics, logs, the connection history writer, the dashboard's watcher)
from the ``FLOSSE`` setting; they are wired again whenever that setting changes. The
decorator itself needs none of this: a project without the app in ``INSTALLED_APPS``
(as 0.2.0 allowed) still streams, without metrics, logs or history.
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.translation import gettext_lazy as _


def _rewire(*, setting: str, **kwargs: Any) -> None:
    if setting == "FLOSSE":
        from .observing.wiring import wire

        # An invalid value raises where it is used (the next stream, the checks), not here.
        with contextlib.suppress(ImproperlyConfigured):
            wire()


class FlosseConfig(AppConfig):
    name = "django_flosse"
    label = "django_flosse"
    verbose_name = _("Server-sent event streams")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import get_config
        from .observing.wiring import wire

        if get_config().shutdown_signals:
            from .streaming.shutdown import install_signal_handlers

            install_signal_handlers()
        wire()
        # After conf's own receiver (connected at its import, above), which clears the cache.
        setting_changed.connect(_rewire, dispatch_uid="django_flosse.rewire")
