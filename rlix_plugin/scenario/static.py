"""The static-partition baseline: the same workload with the pool split evenly into dedicated,
disjoint slices, one per pipeline (no sharing across pipelines).

Pipeline ``i`` gets GPUs ``i*s .. (i+1)*s - 1`` with ``s = gpus // pipelines``; it generates on as
many whole TP bundles of its slice as fit and trains on the first ``min(len(train_gpus), s)`` of
them (its training still preempts its own engines, as on a dedicated machine). Durations, prompts
and seeds are unchanged, so the work is identical; GPUs left over by the division stay idle.
"""

from __future__ import annotations

from dataclasses import replace

from .format import Scenario, ScenarioError


def static_partition(scenario: Scenario) -> Scenario:
    """The scenario's pipelines on dedicated slices.

    :raises ScenarioError: a slice cannot hold one TP bundle of a pipeline.
    """
    count = len(scenario.pipelines)
    size = scenario.gpus // count
    pipelines = []
    for index, pipeline in enumerate(scenario.pipelines):
        first = index * size
        tp = pipeline.infer_tp
        usable = size - size % tp
        infer = tuple(range(first, first + usable))
        groups = [infer[i : i + tp] for i in range(0, usable, tp)]
        per_node = scenario.gpus_per_node
        if not groups or any(g[0] // per_node != g[-1] // per_node for g in groups):
            raise ScenarioError(
                f"scenario {scenario.source}: pipeline {pipeline.name!r}: a static slice of {size} GPU(s) "
                f"cannot hold a TP bundle of {tp} inside one node"
            )
        train = tuple(range(first, first + min(len(pipeline.train_gpus), size)))
        pipelines.append(replace(pipeline, infer_gpus=infer, train_gpus=train))
    return scenario.with_pipelines(tuple(pipelines), name=f"{scenario.name} (static partition)")


__all__ = ["static_partition"]
