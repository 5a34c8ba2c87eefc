"""Supply-side hook: called in the pipeline's process when the scheduler resizes it, answered by
the framework integration that owns the pipeline's engines."""

from __future__ import annotations

from .markers import hookspec


@hookspec(firstresult=True)
def rlix_resize_infer(
    pipeline_id: str, dp_ranks_to_remove: tuple[int, ...], dp_ranks_to_add: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Put generation engines to sleep and wake others.

    Called by the scheduler outside its lock, shrinks before expands. The engines of
    ``dp_ranks_to_remove`` must be paused (in-flight requests retracted, then reported with
    ``rlix_report_preempt``) before their memory is released; a woken engine must load the latest
    weights before it serves. Must be idempotent per rank: waking an awake rank or sleeping a
    sleeping one is a no-op. Each call either sleeps or wakes. Calls for one pipeline may come
    concurrently, from different threads, for disjoint ranks (the scheduler moves different
    bundles independently); an implementation that cannot take that serializes them
    (:class:`rlix_plugin.supply.PipelineEngines` does by default).

    Exactly one implementation owns a pipeline's engines: implementations return ``None`` for
    pipelines they do not own, so that the call stops at the owner.

    :param pipeline_id: The pipeline to resize.
    :param dp_ranks_to_remove: Generation DP ranks to put to sleep (may be empty).
    :param dp_ranks_to_add: Generation DP ranks to wake (may be empty).
    :returns: The DP ranks awake after the resize, sorted; the scheduler checks them against its
        plan (a release must be verified, not assumed). Stops at the first non-None result.
    :raises Exception: the resize failed; the scheduler applies its coordinator-failure policy
        (the pipeline is fenced and its waiters get the error; other pipelines keep running).
    """


__all__ = ["rlix_resize_infer"]
