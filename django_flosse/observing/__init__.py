"""Observing: what the live streams of a process have done, for people and machines.

    registry     live connections and per-stream totals of this process; notifies observers
                 (public: ``registry``, ``Connection``, ``Observer``)
    metrics      Prometheus metrics (public: ``MetricsObserver``)
    log          structlog events (public: ``LogObserver`` and the event names)
    wiring       builds the configured observers and subscribes them (``AppConfig.ready()``)
    _history     the connection history writer: batched rows of ``StreamConnection``
    _rows        a connection as a history row
    _dashboard   the admin dashboard's data: local watcher and per-viewer feed state

Modules starting with ``_`` are internal: their names may change in any release.
"""
