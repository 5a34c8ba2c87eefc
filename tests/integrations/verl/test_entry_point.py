"""verl finds the integration through its ``verl.plugins`` entry point, in a fresh interpreter."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

from rlix_plugin.integrations.verl import entry

PROBE = textwrap.dedent(
    """
    import sys
    import verl
    early = "rlix_plugin.integrations.verl.trainer" in sys.modules
    from verl.trainer.ppo.v1 import get_trainer_cls
    loaded = "rlix_plugin.integrations.verl.trainer" in sys.modules
    try:
        name = get_trainer_cls("rlix_sync").__name__
    except ValueError as exc:
        name = "unknown: " + str(exc)
    print("RESULT", early, loaded, name)
    """
)


def _probe(**env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout + result.stderr
    return lines[-1].removeprefix("RESULT ")


def test_entry_point_is_declared_in_verl_plugins():
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="verl.plugins")}
    assert found.get("rlix") == "rlix_plugin.integrations.verl.entry"
    assert found.get("rlix_cpu") == "rlix_plugin.testing.verl_cpu.entry"


def test_import_verl_registers_the_trainer_mode_with_verls_trainer_registry():
    # Processes that never import verl's trainer (training ranks, servers) do not pay for ours.
    assert _probe(VERL_USE_EXTERNAL_PLUGINS="auto") == "False True RlixPPOTrainerSync"


def test_verl_plugin_switch_off_leaves_verl_untouched():
    early, loaded, rest = _probe(VERL_USE_EXTERNAL_PLUGINS="none").split(" ", 2)
    assert (early, loaded) == ("False", "False")
    assert rest.startswith("unknown: Unknown trainer 'rlix_sync'")


def test_a_load_failure_is_logged_by_name_and_kept(monkeypatch, caplog):
    import verl.trainer.ppo.v1.trainer_base  # noqa: F401  (registration is then immediate)

    # A None entry in sys.modules makes the next import of that name raise ImportError.
    monkeypatch.setitem(sys.modules, "rlix_plugin.integrations.verl.trainer", None)
    with caplog.at_level("WARNING", logger="rlix_plugin.integrations.verl"):
        assert entry.load() is False
    assert "verl integration failed to load" in caplog.text and "'rlix_sync'" in caplog.text
    assert isinstance(entry.load_error, ImportError)
    monkeypatch.undo()
    assert entry.load() is True and entry.load_error is None
