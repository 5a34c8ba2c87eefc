"""Whether miles will hand the hooks to its rollout function, judged where miles calls it.

Holding the hooks is not enough: miles' ``RolloutManager`` (``miles/ray/rollout.py``) calls its
rollout function in one of two ways, chosen once at construction:

* the default path: ``call_rollout_fn(self.generate_rollout, args, rollout_id, data_source,
  evaluation=False, rlix_hooks=self._rlix_hooks)``, which passes ``rlix_hooks`` only when the
  function's signature has a parameter of exactly that name (``miles/rollout/base_types.py``);
  ``generate_rollout_fully_async`` has it, miles' default rollout function does not;
* the experimental path (``MILES_EXPERIMENTAL_ROLLOUT_REFACTOR=1`` in the manager's process, kept
  as ``use_experimental_refactor``), which calls the rollout function with a
  ``RolloutFnTrainInput`` and never passes the hooks.

:func:`describe` reads both in the manager's process (``install`` runs it there); :func:`problem`
says why the hooks would not arrive and how to fix it.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

#: miles' switch for its experimental rollout path.
EXPERIMENTAL_ENV = "MILES_EXPERIMENTAL_ROLLOUT_REFACTOR"
#: The keyword ``call_rollout_fn`` looks for in the rollout function's signature.
HOOKS_PARAMETER = "rlix_hooks"
#: The rollout function of the rlix fork line that takes the hooks.
FULLY_ASYNC = "examples.fully_async.fully_async_rollout.generate_rollout_fully_async"


def _takes_hooks(fn: Any) -> bool | None:
    """Whether ``call_rollout_fn`` would pass ``rlix_hooks`` to ``fn`` (``None``: cannot tell)."""
    try:
        return HOOKS_PARAMETER in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def describe(manager: Any) -> dict[str, Any]:
    """Which rollout path ``manager`` will take, read in its process. Never raises.

    Keys: ``experimental`` (bool), ``function`` (its dotted name or ``None`` when the manager has
    no ``generate_rollout``), ``function_path`` (``args.rollout_function_path``), ``takes_hooks``
    and ``call_rollout_fn_takes_hooks`` (bool, or ``None`` when it cannot be told; the latter only
    when miles' ``base_types`` is already imported there).
    """
    experimental = getattr(manager, "use_experimental_refactor", None)
    if experimental is None:  # not the real manager's attribute: read the switch miles reads
        experimental = os.environ.get(EXPERIMENTAL_ENV, "0").strip() not in ("", "0")
    fn = getattr(manager, "generate_rollout", None)
    base_types = sys.modules.get("miles.rollout.base_types")
    call_rollout_fn = getattr(base_types, "call_rollout_fn", None)
    return {
        "experimental": bool(experimental),
        "function": _name(fn) if callable(fn) else None,
        "function_path": getattr(getattr(manager, "args", None), "rollout_function_path", None),
        "takes_hooks": _takes_hooks(fn) if callable(fn) else None,
        "call_rollout_fn_takes_hooks": _takes_hooks(call_rollout_fn) if callable(call_rollout_fn) else None,
    }


def problem(path: dict[str, Any]) -> str | None:
    """Why the hooks would not reach the rollout function, with the fix; ``None`` if they would."""
    if path.get("experimental"):
        return (
            f"runs miles' experimental rollout path ({EXPERIMENTAL_ENV}=1 in its process), which calls the rollout "
            f"function without {HOOKS_PARAMETER}. Unset {EXPERIMENTAL_ENV} in the RolloutManager's runtime_env"
        )
    if path.get("call_rollout_fn_takes_hooks") is False:
        return (
            f"has a miles.rollout.base_types.call_rollout_fn without the {HOOKS_PARAMETER} parameter (a miles without "
            "the rlix seam); use a miles of the rlix fork line"
        )
    function, where = path.get("function"), path.get("function_path")
    configured = f" (args.rollout_function_path = {where!r})" if where else ""
    if function is None:
        return (
            "has no generate_rollout (the rollout function miles loads from args.rollout_function_path), so nothing "
            "shows the hooks would reach a rollout function; is this miles' RolloutManager?"
        )
    if path.get("takes_hooks") is None:
        return f"calls the rollout function {function}{configured}, whose signature cannot be read"
    if path.get("takes_hooks") is False:
        return (
            f"calls the rollout function {function}{configured}, which has no {HOOKS_PARAMETER} parameter, so "
            f"call_rollout_fn never passes it the hooks (miles' default rollout function is one such). Set "
            f"rollout_function_path to {FULLY_ASYNC}, or give your function a keyword parameter "
            f"{HOOKS_PARAMETER}=None and call its begin_progress_batch / bump_completed / end_progress_batch"
        )
    return None


__all__ = ["EXPERIMENTAL_ENV", "FULLY_ASYNC", "HOOKS_PARAMETER", "describe", "problem"]
