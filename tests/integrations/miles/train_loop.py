"""miles' rlix train loop (``miles/utils/rlix_train_loop.py``), which is not among the pinned files.

Written after the rlix fork line's notes (``shared/third_party/miles-rlix-fork/PROVENANCE.md``):
``run_async_train_loop(args, *, train_group, rollout_manager, before_step, after_step,
release_only=None, num_rollout_per_epoch=None, signal_demand=None)``; every step hook is
``async (rollout_id) -> None``; ``signal_demand`` runs before each rollout is dispatched. Per step:
await the rollout, ``before_step``, train, ``after_step`` (``release_only`` instead when training
failed), then signal and dispatch the next rollout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

StepHook = Callable[[int], Awaitable[None]]


async def run_async_train_loop(
    args,
    *,
    train_group,
    rollout_manager,
    before_step: StepHook,
    after_step: StepHook,
    release_only: StepHook | None = None,
    num_rollout_per_epoch: int | None = None,
    signal_demand: StepHook | None = None,
) -> None:
    start, num_rollout = int(getattr(args, "start_rollout_id", 0) or 0), int(args.num_rollout)
    if num_rollout <= start:
        return
    if signal_demand is not None:
        await signal_demand(start)
    next_rollout = rollout_manager.generate.remote(start)
    for rollout_id in range(start, num_rollout):
        data = await next_rollout
        next_rollout = None
        failed = False
        try:
            await before_step(rollout_id)
            await train_group.train(rollout_id, data)
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                if release_only is not None:
                    await release_only(rollout_id)
            else:
                await after_step(rollout_id)
        if rollout_id + 1 < num_rollout:
            if signal_demand is not None:
                await signal_demand(rollout_id + 1)
            next_rollout = rollout_manager.generate.remote(rollout_id + 1)


__all__ = ["StepHook", "run_async_train_loop"]
