"""The FLOSSE setting: every key, with its default value."""

FLOSSE = {
    # Streaming
    "HEARTBEAT": 15.0,
    "JSON_ENCODER": "django.core.serializers.json.DjangoJSONEncoder",
    "SYNC_READ_AHEAD": 16,
    # Observers of the connection registry
    "OBSERVERS": [
        "django_flosse.observing.metrics.MetricsObserver",
        "django_flosse.observing.log.LogObserver",
    ],
    # Connection limits (per stream, per process)
    "MAX_CONNECTIONS": None,
    "MAX_CONNECTIONS_PER_USER": None,
    "LIMIT_RETRY_AFTER": 5,
    # Clients
    "CLIENT_IP_HEADER": None,
    "RECORD_CLIENT_IP": True,
    # The metrics view
    "METRICS_ALLOWED_NETWORKS": [],
    "METRICS_TOKEN": None,
    # Connection history and the admin dashboard
    "PERSISTENCE": True,
    "FLUSH_INTERVAL": 1.0,
    "LOST_AFTER": 30.0,
    "RETENTION_DAYS": 30,
    "RETENTION_ROWS": 1_000_000,
    "DASHBOARD_TOP": 100,
    # Ending streams: server shutdown, long streams, stuck clients
    "SHUTDOWN_SIGNALS": True,
    "MAX_DURATION": None,
    "SEND_TIMEOUT": 60.0,
    # Broadcast (docs/broadcast.md)
    "BROADCAST_BACKEND": "database",
    "BROADCAST_DATABASE": "default",
    "BROADCAST_LISTEN_URL": None,
    "BROADCAST_POLL_INTERVAL": 0.25,
    "BROADCAST_REDIS_URL": "redis://127.0.0.1:6379/0",
    "BROADCAST_HISTORY": 1000,
    "BROADCAST_HISTORY_SECONDS": 86400,
    "BROADCAST_BUFFER": 1000,
    "BROADCAST_MAX_BYTES": 65536,
}
