"""Logging a real HTTP client into the admin of a server started by the tests (user
``admin``, password ``pw``): the dashboard tests and ``bench/admin_load.py`` use it."""

from __future__ import annotations

from typing import Any


def log_in(client: Any) -> None:
    """Log ``client`` (an ``httpx.Client`` on the server's base URL) in through the form."""
    client.get("/admin/login/")
    response = client.post(
        "/admin/login/",
        data={
            "username": "admin",
            "password": "pw",
            "next": "/admin/",
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302, response.text[:500]
