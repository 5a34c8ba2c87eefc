"""Calling miles' ``RolloutManager``, whether it is a Ray actor handle or a plain object.

In a miles run the manager is a Ray actor (``@ray.remote class RolloutManager``); tests and
single-process tools may hold the object itself. :class:`ManagerProxy` hides the difference and
bounds every remote call with a timeout whose error names the method, the pipeline and the likely
cause, so a stuck manager is reported instead of hanging the caller. Once ``install`` has attached
an :class:`~.engine_channel.EngineChannel`, a remote manager's engine methods go through it, so
they never wait behind a running ``generate``.

The methods the integration uses (names and signatures as in miles' ``miles/ray/rollout.py``):
``set_rlix_hooks(hooks)``, ``get_engine_count()``, ``get_engine_states(engine_indices)``,
``shrink_engines(engine_indices, *, post_sleep_vram_threshold_gb=None)``,
``expand_engines(engine_indices)``, ``set_weight_version(version, engine_indices=None)`` and
``activate_routing(engine_indices)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .engine_channel import CHANNEL_METHODS
from .errors import MilesSurfaceError

#: The hook seam: without it the manager cannot hand hooks to the rollout function.
SET_HOOKS = "set_rlix_hooks"
#: What a resize needs (see :mod:`.engines`).
ENGINE_METHODS = (
    "get_engine_count",
    "get_engine_states",
    "shrink_engines",
    "expand_engines",
    "set_weight_version",
    "activate_routing",
)

#: Longest wait for one manager call that does not move weights (state reads, hooks).
CONTROL_TIMEOUT_S = 60.0


def _is_actor_handle(obj: object) -> bool:
    # Checked by shape so that this module never imports ray: a Ray actor handle's methods are
    # ActorMethod objects with ``.remote``; a plain object's methods are not.
    method = getattr(type(obj), "__module__", "")
    return method.startswith("ray.") and type(obj).__name__ == "ActorHandle"


class ManagerProxy:
    """One pipeline's ``RolloutManager``, local or remote.

    :param manager: The Ray actor handle or the object.
    :param pipeline_id: For messages.
    """

    def __init__(self, manager: Any, pipeline_id: str) -> None:
        self.manager = manager
        self.pipeline_id = pipeline_id
        self.remote = _is_actor_handle(manager)
        #: Set by ``install`` for a remote manager: the route of its engine methods.
        self.channel: Any = None

    def has(self, name: str) -> bool:
        """Whether the manager has method ``name`` (an actor handle knows its class's methods)."""
        try:
            return callable(getattr(self.manager, name)) or self.remote
        except AttributeError:
            return False

    def require(self, names: Iterable[str]) -> None:
        """Raise :class:`MilesSurfaceError` naming every method in ``names`` the manager lacks."""
        missing = [name for name in names if not self.has(name)]
        if not missing:
            return
        kind = "Ray actor" if self.remote else type(self.manager).__qualname__
        if SET_HOOKS in missing:
            raise MilesSurfaceError(
                f"pipeline {self.pipeline_id!r}: the miles RolloutManager ({kind}) has no {SET_HOOKS}(hooks): "
                "this miles predates the rlix hook seam (miles/utils/rlix_hooks.py), or this is not the "
                f"RolloutManager; without it rollout progress can never reach the scheduler "
                f"(also missing: {[m for m in missing if m != SET_HOOKS]})"
            )
        raise MilesSurfaceError(
            f"pipeline {self.pipeline_id!r}: the miles RolloutManager ({kind}) lacks {missing}, which the "
            "scheduler needs to sleep and wake its engines; use a miles with the rlix engine state machine"
        )

    def call(self, name: str, *args: Any, timeout_s: float = CONTROL_TIMEOUT_S, **kwargs: Any) -> Any:
        """Call method ``name`` and return its result, waiting at most ``timeout_s`` if remote
        (through the engine channel for an engine method, once one is attached).

        :raises TimeoutError: a remote call did not answer in time (the message says which and why
            that usually happens).
        """
        if not self.remote:
            return getattr(self.manager, name)(*args, **kwargs)
        if self.channel is not None and name in CHANNEL_METHODS:
            return self.channel.call(name, *args, timeout_s=timeout_s, **kwargs)
        return self.wait(getattr(self.manager, name).remote(*args, **kwargs), name, timeout_s)

    def run_inside(self, fn: Callable[..., Any], *args: Any, timeout_s: float = CONTROL_TIMEOUT_S) -> Any:
        """``fn(manager, *args)`` where the manager lives: in its actor (``__ray_call__``) when
        remote, here otherwise. ``fn`` must be importable (a module-level function)."""
        if not self.remote:
            return fn(self.manager, *args)
        return self.wait(self.manager.__ray_call__.remote(fn, *args), getattr(fn, "__name__", "probe"), timeout_s)

    def wait(self, ref: Any, what: str, timeout_s: float) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayTaskError

        try:
            return ray.get(ref, timeout=timeout_s)
        except GetTimeoutError:
            try:
                ray.cancel(ref)
            except Exception:  # already finished or not cancellable: nothing to undo
                pass
            raise TimeoutError(
                f"pipeline {self.pipeline_id!r}: RolloutManager.{what} did not answer within {timeout_s:.0f}s "
                "(a RolloutManager actor runs one call at a time: is a rollout or a weight sync running on it?)"
            ) from None
        except RayTaskError as exc:
            # Re-raise what the manager raised, not Ray's wrapper, so callers can tell errors apart.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise


__all__ = ["CONTROL_TIMEOUT_S", "ENGINE_METHODS", "SET_HOOKS", "ManagerProxy"]
