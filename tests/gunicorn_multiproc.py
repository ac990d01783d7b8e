"""gunicorn config for multiprocess Prometheus metrics (used by test_observability_servers).

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes its samples to files in that
directory and the metrics view aggregates them. When a worker exits, its live gauges
(``flosse_connections_active`` is ``livesum``) must be dropped: that is ``mark_process_dead``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)
