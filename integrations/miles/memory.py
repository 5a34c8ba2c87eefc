"""GPU memory around a resize: what miles is asked to check, and what the integration checks.

An engine that reports "offloaded" has not necessarily released its memory: SGLang's
``release_memory_occupation`` has returned before the memory was free, and large models keep
gigabytes per GPU after a sleep (``shared/reference/switch-costs.md``). miles' ``shrink_engines``
marks an engine ``offloaded`` either way. Two knobs, both optional:

* ``post_sleep_vram_threshold_gb`` is handed to ``shrink_engines(...,
  post_sleep_vram_threshold_gb=...)``. What miles does with it depends on its version: the pinned
  fork line asks each engine for its residual memory after the sleep and logs it against the
  threshold (the hard gate is left to the caller); miles versions with the gate raise from
  ``shrink_engines``, and the sleep then fails. The integration itself reads no residual.
* :class:`FreeMemoryCheck` is the integration's own gate, run before engines wake: the framework
  supplies a callback that measures free memory on the engines' GPUs, and the wake starts only
  once every engine has ``min_free_gb`` free, whoever slept there before (another pipeline's leak
  is caught here too). Otherwise it fails with :class:`~.errors.GpuMemoryError` and nothing is
  changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rlix_plugin.hookspecs import InvalidRequestError

from .errors import GpuMemoryError

#: ``free_gb(engine_indices) -> {engine index: free GiB}``: the free memory on each engine's GPUs
#: (for a TP > 1 engine, the least free of its GPUs), measured now.
FreeGpuMemory = Callable[[tuple[int, ...]], Mapping[int, float]]


def check_threshold(value: float | None) -> float | None:
    """``post_sleep_vram_threshold_gb`` checked: ``None`` or a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidRequestError(f"post_sleep_vram_threshold_gb must be None or a number of GiB > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FreeMemoryCheck:
    """Before engines wake, wait until their GPUs have room for them.

    :param free_gb: :data:`FreeGpuMemory`, called in the process that called ``install`` (the one
        that runs the resizes), with local engine indices; it may raise, which fails the wake.
    :param min_free_gb: Free GiB an engine needs on each of its GPUs to wake (what it allocates
        when it resumes: weights, KV cache, CUDA graphs).
    :param wait_s: Longest wait for the memory to appear (a release still finishing), polling
        every ``poll_s`` seconds.
    """

    free_gb: FreeGpuMemory
    min_free_gb: float
    wait_s: float = 30.0
    poll_s: float = 0.2

    def __post_init__(self) -> None:
        if not callable(self.free_gb):
            raise InvalidRequestError(
                f"FreeMemoryCheck.free_gb must be callable (engine indices -> GiB), got {self.free_gb!r}"
            )
        for name in ("min_free_gb", "wait_s", "poll_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidRequestError(f"FreeMemoryCheck.{name} must be a number >= 0, got {value!r}")
        if self.poll_s == 0:
            raise InvalidRequestError("FreeMemoryCheck.poll_s must be > 0")

    def wait(self, engines: Sequence[int], where: str) -> dict[int, float]:
        """Return the free GiB of every engine in ``engines`` once all have ``min_free_gb``.

        :param where: Names the pipeline and the DP ranks in the error.
        :raises GpuMemoryError: still short after ``wait_s``; the message has every engine's figure.
        """
        wanted = tuple(engines)
        deadline = time.monotonic() + self.wait_s
        while True:
            free = self._measure(wanted, where)
            short = {e: gb for e, gb in free.items() if gb < self.min_free_gb}
            if not short:
                return free
            if time.monotonic() >= deadline:
                figures = ", ".join(f"engine {e}: {gb:.2f} GiB" for e, gb in sorted(short.items()))
                raise GpuMemoryError(
                    f"{where}: cannot wake engines {list(wanted)}: after {self.wait_s:.1f}s their GPUs still have less "
                    f"than the {self.min_free_gb:.2f} GiB free an engine needs ({figures}); an earlier sleep on those "
                    "GPUs did not release its memory. Nothing was changed."
                )
            time.sleep(self.poll_s)

    def _measure(self, engines: tuple[int, ...], where: str) -> dict[int, float]:
        answer = self.free_gb(engines)
        try:
            free = {int(e): float(answer[e]) for e in engines}
        except (KeyError, TypeError, ValueError) as exc:
            raise GpuMemoryError(
                f"{where}: the free-memory callback answered {answer!r} for engines {list(engines)}; it must map each "
                f"engine index to its free GiB ({type(exc).__name__}: {exc})"
            ) from None
        return free


__all__ = ["FreeGpuMemory", "FreeMemoryCheck", "check_threshold"]
