"""Who may read the metrics: never the whole internet by default.

Allowed: requests from loopback that did not come through a proxy, from a network in
``FLOSSE["METRICS_ALLOWED_NETWORKS"]``, with ``Authorization: Bearer <FLOSSE["METRICS_TOKEN"]>``,
or from a logged-in staff user.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.http import HttpRequest

from .conf import Config

__all__ = ["may_read_metrics"]

# Headers a reverse proxy adds: a request carrying one came through a proxy, and its
# REMOTE_ADDR (often 127.0.0.1) says nothing about the real client.
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def _remote_address(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return None


def _has_token(request: HttpRequest, token: str | None) -> bool:
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Bytes: compare_digest refuses non-ASCII str, and a header is the client's to make up.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def may_read_metrics(request: HttpRequest, config: Config) -> bool:
    if _has_token(request, config.metrics_token):
        return True
    address = _remote_address(request)
    if address is not None:
        proxied = any(header in request.META for header in _PROXY_HEADERS)
        if address.is_loopback and not proxied:
            return True
        if any(address in network for network in config.metrics_allowed_networks):
            return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)
