"""Demand-side hooks: called by a framework integration, answered by a scheduler backend.

Progress is counted in **samples** (see :mod:`rlix_plugin.hookspecs.types`). The progress hooks
(begin / bump / end / report_preempt) are the hot path: implementations must not block on the
network and must not raise into the rollout function; coalesce instead of one RPC per sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .markers import hookspec

if TYPE_CHECKING:
    from .types import Grant


# ---------------------------------------------------------------------------------------------
# Rollout demand
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def rlix_signal_demand(pipeline_id: str, rollout_id: int, step_target: int, timeout_s: float) -> Grant | None:
    """Pre-signal rollout demand and wait until the pipeline can generate.

    Called before the rollout function dispatches anything, once per rollout. It starts the
    rollout's epoch and writes the pipeline into the scheduler's durable open-demand registry
    (``pipeline_id -> step_target``, of rollout ``rollout_id``), which stays until the generation
    cluster is released, the rollout's progress streams all end, or the pipeline unregisters, and
    blocks until at least one generation DP worker of the pipeline is awake. Returns at once if
    one already is. From then on, progress of an older rollout is ignored: its late ``end`` cannot
    retire this rollout's demand. Calling it again for the same ``rollout_id`` (a retry) keeps the
    rollout's streams.

    :param pipeline_id: The registered pipeline.
    :param rollout_id: The rollout about to start: its epoch (an int >= 0, never smaller than the
        pipeline's previous one). The progress hooks of the rollout carry the same value.
    :param step_target: Samples this rollout must collect (> 0).
    :param timeout_s: Longest wait, in seconds (> 0).
    :returns: The generation :class:`~rlix_plugin.hookspecs.types.Grant` (awake DP ranks and their
        GPUs). Stops at the first non-None result. The no-op default returns an unscheduled grant.
    :raises SchedulerTimeoutError: no worker woke in ``timeout_s``; the message carries the
        scheduler's diagnostic (open demand, holders of each GPU, pending queue).
    :raises PipelineGoneError: the pipeline was unregistered while waiting.
    :raises InvalidRequestError: unknown pipeline, ``step_target <= 0``, ``timeout_s <= 0``, or a
        ``rollout_id`` older than the pipeline's current rollout; nothing is changed.
    """


# ---------------------------------------------------------------------------------------------
# Rollout progress (hot path)
# ---------------------------------------------------------------------------------------------


@hookspec
def rlix_begin_progress_batch(
    pipeline_id: str,
    rollout_id: int,
    mode: str,
    adapter_id: str | None,
    target_weight_version: int,
    step_target: int,
    initial_completed: int,
) -> None:
    """Open (or re-open) a progress stream for the rollout that is starting.

    Called once per rollout and stream, before the collection loop. A ``begin`` on a stream that
    never saw its ``end`` closes the stale batch and starts a new one. Never delayed by
    coalescing: the scheduler sees it at once.

    :param pipeline_id: The registered pipeline.
    :param rollout_id: The rollout's epoch, as given to ``rlix_signal_demand``. A batch of a rollout
        older than the pipeline's current one is ignored; a newer one starts its epoch (for a
        framework that does not signal demand).
    :param mode: ``"full"`` (one stream per pipeline) or ``"lora"`` (one stream per adapter).
    :param adapter_id: LoRA adapter of the stream; ``None`` for ``"full"``.
    :param target_weight_version: Policy version the collected samples are for.
    :param step_target: Samples the batch must collect (> 0).
    :param initial_completed: Samples already collected (carried over), ``0 <= . <= step_target``.
    :returns: Nothing; every implementation is called.
    """


@hookspec
def rlix_bump_completed(
    pipeline_id: str, rollout_id: int, mode: str, adapter_id: str | None, target_weight_version: int, count: int
) -> None:
    """Count samples accepted into the open batch.

    Called once per finished sample or group, from the rollout loop. Cheap: implementations
    coalesce (the ``ray`` backend sends at most ~20 reports a second per pipeline). Latest wins on
    the scheduler side; completed is clamped to ``[0, step_target]``. A bump for another rollout
    than the stream's open batch (a straggler) counts nothing.

    :param pipeline_id: The registered pipeline.
    :param rollout_id: Rollout of the batch, as given to ``begin``.
    :param mode: Stream mode, as given to ``begin``.
    :param adapter_id: Stream adapter, as given to ``begin``.
    :param target_weight_version: Version of the policy that produced the samples.
    :param count: Samples accepted by this call (a group of ``n`` samples bumps by ``n``).
    :returns: Nothing; every implementation is called. Never raises into the caller.
    """


@hookspec
def rlix_end_progress_batch(pipeline_id: str, rollout_id: int, mode: str, adapter_id: str | None) -> None:
    """Close a progress stream: the rollout collected what it needed (or gave up).

    Called at normal completion and on the rollout's fatal-error path. The final count is
    delivered before the end. When the pipeline's last stream closes, its open demand is retired
    -- only if the stream is of the pipeline's current rollout: the end of an older rollout, late
    or not, changes nothing.

    :param pipeline_id: The registered pipeline.
    :param rollout_id: Rollout of the batch, as given to ``begin``.
    :param mode: Stream mode, as given to ``begin``.
    :param adapter_id: Stream adapter, as given to ``begin``.
    :returns: Nothing; every implementation is called.
    """


@hookspec
def rlix_report_preempt(pipeline_id: str, dp_rank: int, worker_url: str | None, retracted: int) -> None:
    """An engine was put to sleep while it was generating; its in-flight samples were retracted.

    Called by the framework after it retracted the work (so it can be re-dispatched elsewhere).
    Informational: for metrics and operators; the scheduler already knows it shrank the worker.

    :param pipeline_id: The pipeline whose engine was preempted.
    :param dp_rank: Generation DP rank of the engine (not a local engine index, not a GPU id).
    :param worker_url: Address of the engine's server, if it has one.
    :param retracted: Number of in-flight samples that were retracted.
    :returns: Nothing; every implementation is called.
    """


# ---------------------------------------------------------------------------------------------
# Fixed-mapping stages (training, log-probs, values)
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def rlix_request_gpus(
    pipeline_id: str, cluster: str, priority: int, step_target: int | None, timeout_s: float
) -> Grant | None:
    """Ask for a cluster's GPUs at a priority and block until they are granted.

    Called before each non-rollout stage (training, log-probs, values) at its priority, and at
    pipeline init for the generation cluster; release it with ``rlix_release`` in a ``finally``.
    Stages 0-5 get their registered device mapping and preempt generation workers on those GPUs.
    A GENERATION request (``cluster="actor_infer"``, ``priority=6``) writes the open-demand
    registry and returns once at least one DP worker is awake (partial grants are valid). An
    allocation the pipeline already holds at the same priority returns at once.

    :param pipeline_id: The registered pipeline.
    :param cluster: One of the pipeline's registered cluster names.
    :param priority: A :class:`~rlix_plugin.hookspecs.types.Priority` value (0-6).
    :param step_target: Samples the next rollout must collect; required for GENERATION, ``None``
        otherwise.
    :param timeout_s: Longest wait, in seconds (> 0).
    :returns: The :class:`~rlix_plugin.hookspecs.types.Grant`.
        Stops at the first non-None result. The no-op default returns an unscheduled grant.
    :raises InvalidRequestError: unknown pipeline or cluster, a request already pending for the
        cluster, or a priority different from the one the cluster is held at.
    :raises SchedulerTimeoutError: not granted in ``timeout_s`` (with the scheduler's diagnostic).
    :raises PipelineGoneError: the pipeline was unregistered while waiting.
    """


@hookspec
def rlix_release(pipeline_id: str, cluster: str) -> None:
    """Give a cluster's GPUs back.

    Called after the stage finishes, in a ``finally``. Releasing ``actor_infer`` puts every DP
    worker of the pipeline to sleep and retires its open demand. Releasing a cluster that holds
    nothing is a no-op.

    :param pipeline_id: The registered pipeline.
    :param cluster: The cluster to release.
    :returns: Nothing; every implementation is called.
    :raises InvalidRequestError: unknown pipeline or cluster.
    """


__all__ = [
    "rlix_begin_progress_batch",
    "rlix_bump_completed",
    "rlix_end_progress_batch",
    "rlix_release",
    "rlix_report_preempt",
    "rlix_request_gpus",
    "rlix_signal_demand",
]
