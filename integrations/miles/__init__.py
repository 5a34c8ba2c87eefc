"""miles integration: share GPUs between miles pipelines through the rlix hooks (docs/miles.md).

miles never imports rlix: it holds a hooks object of its ``RLixHooks`` protocol
(``miles/utils/rlix_hooks.py``), handed to its ``RolloutManager`` with ``set_rlix_hooks``, and a
driver whose train loop calls step hooks. This package supplies both ends:

* :mod:`.units` -- groups (miles) to samples (the hooks), the one conversion;
* :mod:`.hooks` -- :class:`MilesRLixHooks`, the object miles' rollout function calls;
* :mod:`.rollout_manager` -- calling the ``RolloutManager``, Ray actor or object, with timeouts;
* :mod:`.engine_channel` -- a thread in the manager's process, so engine calls never wait behind
  a running ``generate``;
* :mod:`.engines` -- :class:`MilesEngines`, the supply side (``rlix_resize_infer``);
* :mod:`.memory` -- the post-sleep threshold and :class:`FreeMemoryCheck`, the GPU memory checks;
* :mod:`.rollout_path` -- whether miles hands the hooks to its rollout function;
* :mod:`.install` -- :func:`install`: wire the hooks at init and verify they took;
* :mod:`.session` -- :class:`MilesSession`: registration and the train loop's step hooks;
* :mod:`.errors` -- what goes wrong, said plainly.

Importing this package imports neither miles nor ray.
"""

#: The logger every module of the integration writes to.
LOGGER_NAME = "rlix_plugin.integrations.miles"

from .engines import MilesEngines, WeightSync  # noqa: E402
from .errors import (  # noqa: E402
    EngineStateError,
    GpuMemoryError,
    HooksNotInstalledError,
    HooksNotPassedError,
    MilesSurfaceError,
)
from .hooks import MilesRLixHooks  # noqa: E402
from .install import Installation, install  # noqa: E402
from .memory import FreeMemoryCheck  # noqa: E402
from .session import MilesSession  # noqa: E402
from .units import GroupUnits  # noqa: E402

__all__ = [
    "LOGGER_NAME",
    "EngineStateError",
    "FreeMemoryCheck",
    "GpuMemoryError",
    "GroupUnits",
    "HooksNotInstalledError",
    "HooksNotPassedError",
    "Installation",
    "MilesEngines",
    "MilesRLixHooks",
    "MilesSession",
    "MilesSurfaceError",
    "WeightSync",
    "install",
]
