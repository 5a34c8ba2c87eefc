"""verl's ``cpu`` platform: tensors on the CPU, collectives over gloo, GPUs as Ray resources.

Selected with ``VERL_PLATFORM=cpu`` in every process of the job (verl reads it when a process
first asks for its platform); auto-detection never picks it. What it changes, and why
(``reference/verl-cpu.md`` lists each failure of vanilla verl 0.9.1 on a CPU machine):

* device ``cpu`` and backend ``gloo``. verl builds its process-group backend as
  ``"cpu:gloo,<device>:<backend>"``, which becomes ``"cpu:gloo,cpu:gloo"`` here, and torch refuses
  a device named twice; :func:`install_process_group_fix` makes ``init_process_group`` keep one
  entry per device.
* Ray resource ``GPU``: verl's placement groups still reserve one logical GPU per rank, so a Ray
  cluster started with ``num_gpus=N`` hosts the same layout as a GPU node with ``N`` GPUs, and the
  rlix scheduler can share those logical GPUs between jobs.
* the FSDP training engines are registered for ``cuda`` and ``npu`` only; verl's own
  ``VERL_ENGINE_DEVICE`` override makes its engine lookup take the ``cuda`` registration, whose
  engine then runs on this platform's device (``cpu``).

Importing this module registers the platform (verl's ``PlatformRegistry``); nothing else happens
until the platform is created.
"""

from __future__ import annotations

import logging
import os
import types
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from rlix_plugin.testing.verl_cpu import PLATFORM_NAME

log = logging.getLogger(__name__)

#: The training-engine lookup key verl's FSDP engines are registered under.
ENGINE_DEVICE = "cuda"


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _mem_get_info(*args: Any, **kwargs: Any) -> tuple[int, int]:
    """``(free, total)`` bytes of host memory, the CPU's answer to ``cuda.mem_get_info``."""
    pages = os.sysconf("SC_PHYS_PAGES")
    page = os.sysconf("SC_PAGE_SIZE")
    available = os.sysconf("SC_AVPHYS_PAGES")
    return available * page, pages * page


def _device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda`` calls verl makes on its device module.

    Memory statistics are zero and cache calls do nothing: the host allocator has no cache to
    empty and no per-device counters. RNG state is torch's global (CPU) generator.
    """
    module = types.ModuleType("rlix_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("_"):
            setattr(module, name, getattr(torch.cpu, name))
    module.empty_cache = _no_op
    module.ipc_collect = _no_op
    module.set_per_process_memory_fraction = _no_op
    module.reset_peak_memory_stats = _no_op
    module.memory_allocated = _zero
    module.memory_reserved = _zero
    module.max_memory_allocated = _zero
    module.max_memory_reserved = _zero
    module.mem_get_info = _mem_get_info
    module.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    module.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_device_name = lambda *args, **kwargs: "cpu"
    module.set_device = _no_op  # verl passes a local rank; there is one CPU device
    return module


def one_backend_per_device(backend: Any) -> Any:
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``: keep the first backend named for each device.

    Anything else (``None``, a plain ``"gloo"``, distinct devices) is returned unchanged.
    """
    if not isinstance(backend, str) or ":" not in backend:
        return backend
    kept: dict[str, str] = {}
    for entry in backend.split(","):
        device, _, name = entry.strip().partition(":")
        kept.setdefault(device, name)
    return ",".join(f"{device}:{name}" for device, name in kept.items())


def install_process_group_fix() -> None:
    """Make ``torch.distributed.init_process_group`` accept verl's backend string on this
    platform (see :func:`one_backend_per_device`). Idempotent."""
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "_rlix_one_backend_per_device", False):
        return

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        if "backend" in kwargs:
            kwargs["backend"] = one_backend_per_device(kwargs["backend"])
        elif args:
            args = (one_backend_per_device(args[0]), *args[1:])
        return original(*args, **kwargs)

    init_process_group._rlix_one_backend_per_device = True  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for a machine without accelerators (see the module docstring)."""

    def __init__(self) -> None:
        install_process_group_fix()
        os.environ.setdefault("VERL_ENGINE_DEVICE", ENGINE_DEVICE)
        self._device_module = _device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a job asks for it with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        # verl places tensors with .to(get_device_id()); an index would mean an accelerator.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray still assigns logical GPU ids to the workers; keep them where verl reads them.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


__all__ = ["ENGINE_DEVICE", "PlatformCPU", "install_process_group_fix", "one_backend_per_device"]
