"""Rollout functions a miles user may configure (``args.rollout_function_path``), for the tests.

miles' own fully-async function (pinned) generates ahead, continuously: its samples come from
whatever weights the engines held when they were generated. The end-to-end tests that check every
sample of rollout ``k`` came from version ``k`` use :func:`generate_rollout_on_policy` instead, a
rollout function written the way a miles user writes one for rlix: the default-path signature with
an ``rlix_hooks`` keyword, and the fully-async function's hook pattern (``begin`` before collecting,
one ``bump`` per accepted group in a try that only logs, ``end`` on success and on the fatal path,
none on any other error). :func:`generate_rollout_without_hooks` has the signature of miles'
default rollout function, which takes no hooks.
"""

from __future__ import annotations

import logging
from typing import Any

from .miles_manager import ROLLOUT_STRIDE

logger = logging.getLogger("tests.miles_rollouts")


def generate_rollout_on_policy(args, rollout_id, data_buffer, evaluation=False, *, rlix_hooks=None):
    """Generate rollout ``rollout_id``'s groups on the routed engines, reporting progress.

    The weight version reported is the one the routed engines hold. ``args.gate`` (test plumbing),
    when set, holds the rollout open after its samples are queued until the gate opens;
    ``args.collect_timeout_s`` bounds each wait for a sample.
    """
    from miles.rollout.base_types import EnginePreemptedError
    from miles.utils.rlix_hooks import NoOpRLixHooks

    from rlix_plugin.reference.framework.engines import PoolAborted

    if evaluation:
        raise ValueError("evaluation is not supported")
    if rlix_hooks is None:
        rlix_hooks = NoOpRLixHooks()
    target, n = args.rollout_batch_size, args.n_samples_per_prompt
    router = data_buffer.router
    failure = data_buffer.failures.pop(rollout_id, None)
    serving = [v for v in router.weight_versions().values() if v is not None]
    rlix_hooks.begin_progress_batch(
        target_weight_version=max(serving, default=0), step_target_groups=int(target), initial_completed=0
    )
    router.submit(data_buffer.jobs(rollout_id))
    if args.gate is not None and not args.gate.wait_open(args.collect_timeout_s):
        raise TimeoutError(f"rollout {rollout_id}: the gate did not open within {args.collect_timeout_s}s")
    partial: dict[int, list[Any]] = {}
    data: list[list[Any]] = []
    while len(data) < target:
        if failure is not None and len(data) >= failure[1]:
            if failure[0] == "fatal":  # miles' fatal-error path: end, then raise
                rlix_hooks.end_progress_batch()
                raise EnginePreemptedError(f"rollout {rollout_id}: engine preempted for good (injected)")
            raise RuntimeError(f"rollout {rollout_id}: unexpected failure (injected)")  # no end
        try:
            (sample,) = router.collect(1, args.collect_timeout_s)
        except PoolAborted as fatal:
            rlix_hooks.end_progress_batch()
            raise EnginePreemptedError(str(fatal)) from fatal
        if sample.index // ROLLOUT_STRIDE != rollout_id:
            continue  # left queued by a rollout that failed: stale
        key = (sample.index % ROLLOUT_STRIDE) // n
        group = partial.setdefault(key, [])
        group.append(sample)
        if len(group) < n:
            continue
        data.append(sorted(partial.pop(key), key=lambda s: s.index))
        try:
            rlix_hooks.bump_completed(target_weight_version=int(sample.weight_version))
        except Exception as exc:
            logger.warning(f"rlix_hooks.bump_completed failed: {exc!r}")
    data = sorted(data, key=lambda g: g[0].index)
    rlix_hooks.end_progress_batch()
    return data


def generate_rollout_without_hooks(args, rollout_id, data_buffer, evaluation=False):
    """The shape of miles' default rollout function: no ``rlix_hooks`` parameter."""
    return []
