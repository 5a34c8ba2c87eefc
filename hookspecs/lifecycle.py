"""Lifecycle hooks: a pipeline joins and leaves the shared GPU pool.

Called by a framework integration (or the reference framework) once per pipeline, in the process
that drives the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .markers import hookspec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .types import ClusterSpec, PipelineLimits, SwitchCosts


@hookspec
def rlix_register_pipeline(
    pipeline_id: str,
    clusters: Mapping[str, ClusterSpec],
    switch_costs: SwitchCosts | None,
    limits: PipelineLimits | None,
) -> None:
    """Register and admit a pipeline before it requests any GPU.

    Called once, at pipeline init, before the first ``rlix_signal_demand`` or
    ``rlix_request_gpus``.

    :param pipeline_id: Unique name of the pipeline on this scheduler (letters, digits, ``-_.``).
    :param clusters: Cluster name (``actor_train``, ``actor_infer``, ``critic``, ``reference``) to
        its :class:`~rlix_plugin.hookspecs.types.ClusterSpec`. ``actor_infer`` is required. GPU
        ids are global; every TP bundle must be contiguous and inside one node.
    :param switch_costs: The framework's estimate of what waking, putting to sleep and
        re-syncing one engine costs (:class:`~rlix_plugin.hookspecs.types.SwitchCosts`), or
        ``None``. The scheduler uses it until it has measured the pipeline's own resizes.
    :param limits: The pipeline's declared maximum step target and generation quota
        (:class:`~rlix_plugin.hookspecs.types.PipelineLimits`), or ``None`` (no bound, quota
        of at least one bundle).
    :returns: Nothing; every implementation is called. The backend keeps the *lease* the
        scheduler returns (an unguessable token for this pipeline) and presents it on every later
        call for the pipeline; code that does not hold it cannot act for the pipeline.
    :raises InvalidRequestError: unknown cluster name, GPU id out of range, duplicate id inside a
        cluster, a TP group that crosses a node or is not contiguous, or a pipeline id already
        registered. Nothing is registered then.
    """


@hookspec
def rlix_unregister_pipeline(pipeline_id: str, reason: str) -> None:
    """Remove a pipeline: free every GPU it holds and clear its open demand and progress.

    Called when the pipeline finishes or fails (in a ``finally``). Its blocked callers are woken
    with :class:`~rlix_plugin.hookspecs.errors.PipelineGoneError`.

    :param pipeline_id: The pipeline to remove. Unknown ids are ignored (unregister is idempotent).
        Only the holder of the pipeline's lease may remove it (:class:`NotPipelineOwnerError`).
    :param reason: Free text recorded for operators (``"finished"``, the exception, ...).
    :returns: Nothing; every implementation is called.
    """


__all__ = ["rlix_register_pipeline", "rlix_unregister_pipeline"]
