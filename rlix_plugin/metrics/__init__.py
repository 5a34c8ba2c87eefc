"""Prometheus metrics of the scheduler (the catalog: :mod:`.catalog`).

* **Ray backend**: the scheduler actor exports them through Ray's own metrics pipeline
  (``ray.util.metrics``), so a cluster whose Prometheus already scrapes Ray gets them with no new
  port. Ray puts ``ray_`` in front of every application metric: ``ray_rlix_gpus_held``.
* **Local backend**: opt in with ``RLIX_METRICS_PORT=9464`` (and ``RLIX_METRICS_ADDRESS``, default
  ``127.0.0.1``); every :class:`~rlix_plugin.backends.local.LocalScheduler` then serves them with
  ``prometheus_client`` (``pip install "rlix-plugin[metrics]"``).

Frameworks that sync weights into engines report each sync with :func:`report_weight_sync`.

Importing this package is cheap: ``prometheus_client`` and ray are imported only when used.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from rlix_plugin.hookspecs import BackendUnavailableError, InvalidRequestError

if TYPE_CHECKING:
    from rlix_plugin.backends.local import LocalScheduler

    from .local import SchedulerMetrics

log = logging.getLogger(__name__)

PORT_VARIABLE = "RLIX_METRICS_PORT"
ADDRESS_VARIABLE = "RLIX_METRICS_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1"


def endpoint_from_environment() -> tuple[str, int] | None:
    """``(address, port)`` from ``RLIX_METRICS_PORT`` / ``RLIX_METRICS_ADDRESS``; None when the
    port is not set.

    :raises InvalidRequestError: the port is not an int in 1..65535.
    """
    raw = os.environ.get(PORT_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise InvalidRequestError(f"{PORT_VARIABLE}={raw!r} is not a port (an int in 1..65535)")
    return os.environ.get(ADDRESS_VARIABLE, "").strip() or DEFAULT_ADDRESS, port


def serve_local(scheduler: LocalScheduler) -> SchedulerMetrics | None:
    """Attach ``scheduler`` to the process' metrics endpoint when ``RLIX_METRICS_PORT`` asks for
    one (None otherwise).

    :raises InvalidRequestError: a bad ``RLIX_METRICS_PORT``.
    :raises BackendUnavailableError: ``prometheus_client`` is not installed.
    :raises RlixError: the endpoint cannot be served.
    """
    endpoint = endpoint_from_environment()
    if endpoint is None:
        return None
    try:
        from . import local
    except ImportError as exc:
        raise BackendUnavailableError(
            f'{PORT_VARIABLE} is set but prometheus_client is missing ({exc}): pip install "rlix-plugin[metrics]"'
        ) from None
    return local.attach(scheduler, *endpoint)


def report_weight_sync(pipeline_id: str, seconds: float) -> None:
    """A framework synced new weights into ``pipeline_id``'s awake engines in ``seconds``
    (``rlix_weight_sync_seconds``). Recorded on this process' local metrics endpoint if it serves
    one, else through Ray's metrics pipeline if this process is connected to Ray, else dropped.
    Never raises for an exporter's failure (logged); a bad argument is an error.

    :raises InvalidRequestError: ``pipeline_id`` is not a non-empty string or ``seconds`` not a
        finite number >= 0.
    """
    if not isinstance(pipeline_id, str) or not pipeline_id:
        raise InvalidRequestError(f"pipeline_id must be a non-empty str, got {pipeline_id!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequestError(f"seconds must be a finite number >= 0, got {seconds!r}")
    try:
        local = sys.modules.get("rlix_plugin.metrics.local")
        current = local.current() if local is not None else None
        if current is not None:
            current.scheduler.call_soon(current.recorder.weight_sync, pipeline_id, float(seconds))
            return
        ray: Any = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            from .ray import process_recorder

            process_recorder().weight_sync(pipeline_id, float(seconds))
    except Exception:  # metrics must never break the framework's training loop
        log.exception("could not record a weight sync of pipeline %s", pipeline_id)


__all__ = ["ADDRESS_VARIABLE", "PORT_VARIABLE", "endpoint_from_environment", "report_weight_sync", "serve_local"]
