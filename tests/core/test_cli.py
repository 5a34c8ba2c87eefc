"""``rlix-plugin plugins``: where each plugin came from and which hooks it implements."""

from __future__ import annotations

import json
import subprocess
import sys

from rlix_plugin import cli, hookimpl
from rlix_plugin.manager import ENTRY_POINT_GROUP

from . import fake_dists


class MetricsPlugin:
    @hookimpl
    def rlix_bump_completed(self, count):
        pass

    @hookimpl
    def rlix_release(self, pipeline_id):
        pass


def test_plugins_json_lists_entry_point_and_failures(monkeypatch, capsys):
    monkeypatch.delenv("RLIX_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    fake_dists.install(
        monkeypatch,
        fake_dists.FakeDistribution(
            "rlix-metrics", "0.3", [fake_dists.FakeEntryPoint("metrics", ENTRY_POINT_GROUP, MetricsPlugin)]
        ),
        fake_dists.FakeDistribution(
            "rlix-bad", "0.1", [fake_dists.FakeEntryPoint("bad", ENTRY_POINT_GROUP, lambda: 1 / 0)]
        ),
    )
    assert cli.main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in out["plugins"]}
    assert by_name["metrics"]["kind"] == "entry point"
    assert by_name["metrics"]["source"] == "rlix-metrics 0.3: fake_module:metrics"
    assert by_name["metrics"]["hooks"] == ["rlix_bump_completed", "rlix_release"]
    assert by_name["rlix-noop"]["kind"] == "built-in"
    assert [f["name"] for f in out["failed"]] == ["bad"]
    assert "ZeroDivisionError" in out["failed"][0]["error"]


def test_plugins_text_and_bad_backend(capsys):
    assert cli.main(["plugins"]) == 0
    assert "rlix-noop  [built-in]" in capsys.readouterr().out
    assert cli.main(["plugins", "--backend", "bogus"]) == 2
    assert "unknown rlix backend 'bogus'" in capsys.readouterr().err


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "rlix_plugin.cli", "plugins", "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backend"] == "noop"


def test_import_is_light():
    code = "import sys, rlix_plugin, rlix_plugin.hookspecs; print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray','torch','verl'}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_version_is_written_once_and_the_package_is_typed():
    import importlib.metadata
    import pathlib

    import rlix_plugin

    assert importlib.metadata.version("rlix-plugin") == rlix_plugin.__version__
    root = pathlib.Path(rlix_plugin.__file__).parent
    assert (root / "py.typed").is_file(), "PEP 561 marker missing: annotations reach no downstream checker"
    pyproject = root.parent / "pyproject.toml"  # present in a source checkout (editable install)
    if pyproject.is_file():
        assert f'version = "{rlix_plugin.__version__}"' not in pyproject.read_text(), "written in pyproject.toml too"
