"""Small helpers shared by the benchmark scripts (median/percentiles, JSON output)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def latency_figures(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of latencies in milliseconds, rounded to microseconds."""
    return {
        "p50_ms": round(median(latencies_ms), 3),
        "p99_ms": round(percentile(latencies_ms, 99), 3),
        "max_ms": round(max(latencies_ms), 3),
    }


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print ``result`` as one JSON object (``--json``) or as aligned key/value lines."""
    result = {**result, "python": platform.python_version(), "machine": platform.machine()}
    if as_json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
