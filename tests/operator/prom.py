"""A real Prometheus server for the tests (Debian's ``prometheus`` package), scraping the targets
a test names, and the dashboard's queries to evaluate through its HTTP API."""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from ..waiting import wait_until
from .support import free_port

PROMETHEUS = shutil.which("prometheus")
SKIP_REASON = (
    "the Debian package 'prometheus' is not installed (apt-get update && apt-get install -y "
    "prometheus); .ci/run installs it"
)
DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "docs" / "grafana" / "rlix.json"
#: What the tests put for Grafana's ``$__rate_interval``: long enough to hold two scrapes of the
#: shortest run and an event of each kind.
RATE_INTERVAL = "30s"


class Prometheus:
    """``prometheus`` scraping ``targets`` (host:port) every ``scrape_s`` seconds (each scrape may
    take as long), its data in ``folder``."""

    def __init__(self, folder: pathlib.Path, targets: Sequence[str], scrape_s: float = 0.25) -> None:
        assert PROMETHEUS is not None, SKIP_REASON
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "global": {
                        "scrape_interval": f"{round(scrape_s * 1000)}ms",
                        "scrape_timeout": f"{round(scrape_s * 1000)}ms",
                        "evaluation_interval": "1s",
                    },
                    "scrape_configs": [{"job_name": "rlix", "static_configs": [{"targets": list(targets)}]}],
                }
            )
        )
        #: Prometheus' own word on the last failed scrape of each target that is not up.
        self.scrape_errors: dict[str, str] = {}
        self.log = (folder / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            self._ready, 30, f"Prometheus ready on {self.url} (log: {folder / 'prometheus.log'})", interval_s=0.1
        )

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}; see {self.log.name}")
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: the result vector (``metric`` labels, ``value``)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def targets_up(self) -> bool:
        answer = json.loads(urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5).read())
        active = answer["data"]["activeTargets"]
        self.scrape_errors = {
            t["scrapeUrl"]: f"{t['health']}: {t.get('lastError') or 'not scraped yet'}"
            for t in active
            if t["health"] != "up"
        }
        return bool(active) and not self.scrape_errors

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def dashboard_queries() -> list[tuple[str, str, list[str]]]:
    """Every panel query of the dashboard: (panel title, PromQL with Grafana's variables filled,
    the labels its legend shows)."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            out.append((panel["title"], expr, re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", ""))))
    return out


def unanswered(prometheus: Prometheus) -> list[str]:
    """The queries that return no series with their legend's labels and a number yet."""
    missing = []
    for title, expr, labels in dashboard_queries():
        result = prometheus.query(expr)
        good = [
            r for r in result if all(label in r["metric"] for label in labels) and math.isfinite(float(r["value"][1]))
        ]
        if not good:
            missing.append(f"{title}: {expr} -> {result[:3]}")
    return missing


def wait_answered(prometheus: Prometheus, timeout_s: float = 60.0) -> list[str]:
    """Wait until every dashboard query is answered; returns the ones still unanswered at the
    timeout (empty when all are)."""
    missing: list[str] = []

    def answered() -> bool:
        missing[:] = unanswered(prometheus)
        return not missing

    try:
        wait_until(answered, timeout_s, "every dashboard query to return series", interval_s=0.5)
    except AssertionError:
        pass  # the caller reports which ones
    return missing
