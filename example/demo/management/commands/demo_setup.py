"""``manage.py demo_setup``: the demo's login, and the URLs to open. Demo only.

Creates the superuser ``demo`` (password ``demo``) only when the database has no superuser
at all, so it never touches a real project's accounts, then prints how to log in and
where to go. This command lives in the example project, never in django_flosse.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.urls import reverse

USERNAME = "demo"
PASSWORD = "demo"  # demo only: the demo listens on 127.0.0.1 and nowhere else


class Command(BaseCommand):
    help = "Create the demo superuser (demo/demo) if there is no superuser; print the URLs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--server", default="uvicorn", help="name shown in the banner")

    def handle(self, *args: Any, host: str, port: int, server: str, **options: Any) -> None:
        User = get_user_model()
        users = User._default_manager
        if not users.filter(is_superuser=True).exists():
            users.create_superuser(USERNAME, email="", password=PASSWORD)  # type: ignore[attr-defined]
            login = f"created the superuser {USERNAME!r} with the password {PASSWORD!r}"
        else:
            demo = users.filter(username=USERNAME, is_superuser=True).first()
            if demo is not None and demo.check_password(PASSWORD):
                login = f"log in as {USERNAME!r} with the password {PASSWORD!r}"
            else:
                login = "a superuser already exists: log in with it (no demo user was created)"

        base = f"http://{host}:{port}"
        lines = [
            "",
            f"  django-flosse demo ({server})",
            "",
            f"  home (EventSource):  {base}{reverse('home')}",
            f"  htmx page:           {base}{reverse('htmx')}",
            f"  broadcast page:      {base}{reverse('broadcast')}",
            f"  live dashboard:      {base}{reverse('admin:django_flosse_dashboard')}",
            f"  metrics:             {base}{reverse('flosse:metrics')}",
            "",
            f"  admin login: {login}.",
            "  These credentials are for this local demo only.",
            "",
            "  Traffic for the dashboard: make demo-load (in another terminal).",
            "  Ctrl-C to stop.",
            "",
        ]
        self.stdout.write("\n".join(lines))
