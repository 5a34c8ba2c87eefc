"""The backend port: what a transport to a scheduler offers the hook layer.

:class:`SchedulerPort` is the one extension point between the hooks (:mod:`.hooks`, written once)
and a scheduler, wherever it runs: :class:`~rlix_plugin.backends.local.LocalPort` (a scheduler in
this process) and :class:`~rlix_plugin.backends.ray.RayPort` (the scheduler actor of a Ray
cluster) implement it. Contract, for every implementation:

* every call that changes what a pipeline holds or wants carries the pipeline's lease, which
  :meth:`SchedulerPort.register` returned; a wrong lease raises
  :class:`~rlix_plugin.hookspecs.NotPipelineOwnerError` and changes nothing;
* blocking calls return within their ``timeout_s`` plus a transport grace, or raise
  :class:`~rlix_plugin.hookspecs.SchedulerTimeoutError` with the scheduler's diagnostic; a
  scheduler that restarts under a call is called again (the same idempotency key, the time
  left) and its answer is the call's; a scheduler that is gone for good raises
  :class:`~rlix_plugin.hookspecs.SchedulerUnavailableError`;
* :meth:`SchedulerPort.send_progress` and :meth:`SchedulerPort.report_preempt` never block on the
  network: they are called from the progress thread and the engines, and failures come back
  from a later call (the hook layer logs them as "progress signal lost");
* the resize callable given at registration is run in the caller's process, where the engines
  are, each call on its own thread, and may be running for several calls of one pipeline at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rlix_plugin.hookspecs import ClusterSpec, Grant, PipelineLimits, SwitchCosts

if TYPE_CHECKING:
    from rlix_plugin.progress import ProgressReport

#: ``resize(pipeline_id, dp_ranks_to_remove, dp_ranks_to_add) -> awake ranks | None``: runs the
#: pipeline's ``rlix_resize_infer`` in this process.
ResizeHook = Callable[[str, tuple[int, ...], tuple[int, ...]], "tuple[int, ...] | None"]


@dataclass(frozen=True)
class Registration:
    """Everything a pipeline declares when it joins the pool."""

    pipeline_id: str
    clusters: Mapping[str, ClusterSpec]
    switch_costs: SwitchCosts | None = None
    limits: PipelineLimits | None = None


class SchedulerPort(Protocol):
    """A transport to one scheduler (see the module docstring for the contract)."""

    #: Backend name, for messages (``"local"``, ``"ray"``).
    name: str

    def register(self, registration: Registration, resize: ResizeHook) -> str:
        """Register and admit; returns the pipeline's lease."""

    def unregister(self, pipeline_id: str, lease: str, reason: str) -> None:
        """Remove the pipeline and stop serving its resizes (idempotent)."""

    def signal_demand(self, pipeline_id: str, lease: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant:
        """Write the open demand and wait until a generation worker is awake."""

    def request(
        self, pipeline_id: str, lease: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
    ) -> Grant:
        """Wait until ``cluster`` is granted."""

    def release(self, pipeline_id: str, lease: str, cluster: str) -> None:
        """Give ``cluster`` back (for the generation cluster: once its workers sleep)."""

    def report_preempt(self, pipeline_id: str, lease: str, dp_rank: int, retracted: int) -> None:
        """Fire and forget: an engine was put to sleep mid-generation."""

    def send_progress(self, lease: str, report: ProgressReport) -> None:
        """Fire and forget one coalesced progress report; raise if an earlier one was lost."""

    def flush(self, timeout_s: float) -> bool:
        """Wait until every report sent so far was applied; False on timeout."""

    def is_registered(self, pipeline_id: str) -> bool:
        """Whether the scheduler knows ``pipeline_id`` (one round trip)."""

    def diagnostic(self, headline: str) -> str:
        """The scheduler's view: open demand, holders, pending requests, progress."""

    def close(self) -> None:
        """Stop this transport's threads, and the scheduler when it is this transport's alone
        (a shared one is not closed)."""


__all__ = ["Registration", "ResizeHook", "SchedulerPort"]
