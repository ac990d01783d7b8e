"""A throwaway Prometheus on 127.0.0.1 that scrapes a test server, for the monitoring tests.

Debian's ``prometheus`` package provides ``prometheus`` and ``promtool``. The server runs with
its data in a temporary directory, scrapes one target every second and evaluates
``monitoring/prometheus/flosse-rules.yml`` every second; it is stopped by the pid of the
process we started. When the binaries are missing the fixture skips with the reason, except
in CI (``CI=true``), where ``.ci/run`` installs them and a missing server must fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import stop_process
from tests.support.servers import HOST, REPO_ROOT, free_port

RULES = REPO_ROOT / "monitoring" / "prometheus" / "flosse-rules.yml"
RULE_TESTS = REPO_ROOT / "monitoring" / "prometheus" / "flosse-rules.test.yml"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "django-flosse.json"
JOB = "django-flosse"  # the job FlosseMetricsTargetDown watches
START_TIMEOUT = 30.0


def require(binary: str) -> str:
    """The path of ``binary`` (prometheus, promtool), or skip/fail saying how to get it."""
    found = shutil.which(binary)
    if found is None:
        reason = f"{binary} not found (Debian package 'prometheus')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run should have installed it")
        pytest.skip(f"{reason}; install it to run the monitoring tests")
    return found


class Prometheus:
    """``prometheus`` scraping ``target`` (host:port) at ``metrics_path`` every second."""

    def __init__(self, target: str, metrics_path: str) -> None:
        self.binary = require("prometheus")
        self.root = Path(tempfile.mkdtemp(prefix="flosse-prom-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": metrics_path,
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        # JSON is YAML: no YAML writer needed.
        (self.root / "prometheus.yml").write_text(json.dumps(config))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Prometheus:
        self.port = free_port()
        log = (self.root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus did not become ready:\n{self.logs()}")

    def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` at now: the whole answer (raises on an HTTP error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 400/422: the error is in the body
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def metric_names(self) -> set[str]:
        with urllib.request.urlopen(f"{self.url}/api/v1/label/__name__/values", timeout=10) as r:
            return set(json.loads(r.read())["data"])

    def logs(self) -> str:
        try:
            return (self.root / "prometheus.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout=10, kill_timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)
