"""miles integration: share GPUs between miles pipelines through the rlix hooks (docs/miles.md).

miles never imports rlix: it holds a hooks object of its ``RLixHooks`` protocol
(``miles/utils/rlix_hooks.py``), handed to its ``RolloutManager`` with ``set_rlix_hooks``, and a
driver whose train loop calls step hooks. This package supplies both ends:

* :mod:`.units` -- groups (miles) to samples (the hooks), the one conversion;
* :mod:`.hooks` -- :class:`MilesRLixHooks`, the object miles' rollout function calls;
* :mod:`.rollout_manager` -- calling the ``RolloutManager``, Ray actor or object, with timeouts;
* :mod:`.engines` -- :class:`MilesEngines`, the supply side (``rlix_resize_infer``);
* :mod:`.install` -- :func:`install`: wire the hooks at init and verify they took;
* :mod:`.session` -- :class:`MilesSession`: registration and the train loop's step hooks;
* :mod:`.errors` -- what goes wrong, said plainly.

Importing this package imports neither miles nor ray.
"""

#: The logger every module of the integration writes to.
LOGGER_NAME = "rlix_plugin.integrations.miles"

from .engines import MilesEngines, WeightSync  # noqa: E402
from .errors import EngineStateError, HooksNotInstalledError, MilesSurfaceError  # noqa: E402
from .hooks import MilesRLixHooks  # noqa: E402
from .install import Installation, install  # noqa: E402
from .session import MilesSession  # noqa: E402
from .units import GroupUnits  # noqa: E402

__all__ = [
    "LOGGER_NAME",
    "EngineStateError",
    "GroupUnits",
    "HooksNotInstalledError",
    "Installation",
    "MilesEngines",
    "MilesRLixHooks",
    "MilesSession",
    "MilesSurfaceError",
    "WeightSync",
    "install",
]
