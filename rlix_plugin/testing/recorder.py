"""Record hook calls with their arguments, for tests (built on ``add_hookcall_monitoring``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from rlix_plugin.manager import RlixPluginManager


@dataclass(frozen=True)
class HookCall:
    """One finished hook call: its name, keyword arguments, result or exception, and the names of
    the implementations in the order they were called."""

    name: str
    kwargs: dict[str, Any]
    result: Any = None
    exception: BaseException | None = None
    implementations: tuple[str, ...] = field(default_factory=tuple)

    def __getattr__(self, key: str) -> Any:
        # call.pipeline_id reads the argument of that name, as pytest's HookRecorder does.
        try:
            return self.kwargs[key]
        except KeyError:
            raise AttributeError(f"hook call {self.name} has no argument {key!r}") from None


class HookRecorder:
    """Records every ``rlix_*`` hook call on a plugin manager until :meth:`close`.

    Installing a recorder turns the front end's hot-path guard off, so calls that would reach only
    the no-op default are recorded too. Thread-safe.
    """

    def __init__(self, pm: RlixPluginManager) -> None:
        self._lock = threading.Lock()
        self._calls: list[HookCall] = []
        self._undo: Callable[[], None] | None = pm.add_hookcall_monitoring(self._before, self._after)

    def _before(self, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        return None

    def _after(self, outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
        call = HookCall(
            name=hook_name,
            kwargs=dict(kwargs),
            result=None if outcome.exception is not None else outcome.get_result(),
            exception=outcome.exception,
            # pluggy calls implementations last-registered first: record them in call order.
            implementations=tuple(impl.plugin_name for impl in reversed(hook_impls)),
        )
        with self._lock:
            self._calls.append(call)

    def close(self) -> None:
        """Stop recording (idempotent)."""
        if self._undo is not None:
            self._undo()
            self._undo = None

    def calls(self, *names: str) -> list[HookCall]:
        """Recorded calls, oldest first; only those of ``names`` if given (``rlix_`` optional)."""
        wanted = {n if n.startswith("rlix_") else f"rlix_{n}" for n in names}
        with self._lock:
            return [c for c in self._calls if not wanted or c.name in wanted]

    def names(self) -> list[str]:
        """Hook names of the recorded calls, in order."""
        return [c.name for c in self.calls()]

    def getcall(self, name: str) -> HookCall:
        """The only call of hook ``name``; raises if there is not exactly one."""
        found = self.calls(name)
        if len(found) != 1:
            raise AssertionError(f"expected exactly one call of {name}, got {len(found)}: {self.names()}")
        return found[0]

    def assert_order(self, *names: str) -> None:
        """Assert that ``names`` occur in this order among the recorded calls (others may
        interleave)."""
        wanted = [n if n.startswith("rlix_") else f"rlix_{n}" for n in names]
        recorded = self.names()
        position = 0
        for name in recorded:
            if position < len(wanted) and name == wanted[position]:
                position += 1
        if position < len(wanted):
            raise AssertionError(
                f"hook calls out of order: wanted {wanted} as a subsequence of {recorded}; "
                f"missing from {wanted[position]!r} on"
            )

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()


__all__ = ["HookCall", "HookRecorder"]
