"""The app config: installing ``"django_flosse"`` turns on the history and the admin.

The decorator works without the app (nothing on its import path touches models); only
``ready()``, which runs when the app is installed, wires the persistence writer.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FlosseConfig(AppConfig):
    name = "django_flosse"
    label = "django_flosse"
    verbose_name = _("Server-sent event streams")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import get_config

        config = get_config()
        if config.shutdown_signals:
            from .shutdown import install_signal_handlers

            install_signal_handlers()
        if config.persistence:
            # Imported here: persistence imports the models, which needs the app registry.
            from .persistence import writer
            from .registry import registry

            registry.subscribe(writer)
