"""The pinned files of the miles fork line that carries the rlix seam.

They live next to this checkout, in ``../shared/third_party/miles-rlix-fork`` (its PROVENANCE.md
says which file comes from where, and which are stubs); ``RLIX_MILES_FORK`` names another place.
Tests import miles from there, never from a copy: :func:`load` puts the directory on ``sys.path``
and returns the modules, or skips the test with :data:`SKIP_REASON` when the directory is absent.
CI has the files, and ``.ci/run`` fails when any test skipped for that reason.

Ray actors that run miles code get the directory on their ``PYTHONPATH`` (:func:`runtime_env`).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

#: Environment variable naming the directory of the pinned files, when it is not the default.
FORK_ENV = "RLIX_MILES_FORK"
#: ``<checkout>/../shared/third_party/miles-rlix-fork``.
DEFAULT_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "third_party" / "miles-rlix-fork"
#: The start of every skip reason given for missing files (``.ci/run`` looks for it).
SKIP_REASON = "the pinned miles fork files are not at"

#: module attribute -> module, as miles names them.
MODULES = {
    "rlix_hooks": "miles.utils.rlix_hooks",
    "base_types": "miles.rollout.base_types",
    "types": "miles.utils.types",
    "data_source": "miles.rollout.data_source",
    "fully_async": "examples.fully_async.fully_async_rollout",
    "state_machine": "rollout_manager_state_machine",
}


def fork_dir() -> Path:
    return Path(os.environ.get(FORK_ENV) or DEFAULT_DIR)


def load() -> SimpleNamespace:
    """The pinned miles modules (see :data:`MODULES`), importing them on first use; skips the
    calling test, or the whole module when called at import, when the files are absent."""
    where = fork_dir()
    if not (where / "miles" / "utils" / "rlix_hooks.py").is_file():
        pytest.skip(
            f"{SKIP_REASON} {where} (../shared/third_party/miles-rlix-fork of the checkout, or "
            f"${FORK_ENV}); CI has them",
            allow_module_level=True,
        )
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
    return SimpleNamespace(dir=where, **{name: importlib.import_module(module) for name, module in MODULES.items()})


def runtime_env(env_vars: dict[str, str] | None = None) -> dict:
    """A Ray ``runtime_env`` whose processes import the pinned files."""
    return {"env_vars": {"PYTHONPATH": str(fork_dir()), **(env_vars or {})}}
