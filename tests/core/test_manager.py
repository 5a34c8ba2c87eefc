"""get_plugin_manager: order, environment switches, entry points (fake distributions), backends."""

from __future__ import annotations

import logging

import pytest

from rlix_plugin import get_plugin_manager, hookimpl
from rlix_plugin.hookspecs import BackendUnavailableError, InvalidRequestError
from rlix_plugin.manager import ENTRY_POINT_GROUP, PluginLoadError

from . import fake_dists


class GoodPlugin:
    @hookimpl
    def rlix_bump_completed(self, pipeline_id, count):
        self.last = (pipeline_id, count)


class UnknownHookPlugin:
    @hookimpl
    def rlix_bump_complete(self, pipeline_id):  # misspelt on purpose
        pass


def _broken():
    raise ImportError("No module named 'missing_dep'")


def dist(name, *entry_points):
    return fake_dists.FakeDistribution(name, "1.2.3", list(entry_points))


def ep(name, loader, group=ENTRY_POINT_GROUP):
    return fake_dists.FakeEntryPoint(name, group, loader)


@pytest.fixture
def autoload_env(monkeypatch):
    monkeypatch.delenv("RLIX_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def test_default_is_noop_and_only_builtin(autoload_env, monkeypatch):
    fake_dists.install(monkeypatch)
    pm = get_plugin_manager()
    assert pm.backend_name == "noop"
    assert [name for name, _ in pm.list_name_plugin()] == ["rlix-noop"]
    assert pm.origins["rlix-noop"].kind == "built-in"
    assert pm.live_hooks() == frozenset()


def test_good_entry_point_is_loaded_with_its_distribution(autoload_env, monkeypatch):
    plugin = GoodPlugin()
    other_group = ep("not-ours", _broken, group="something_else")
    fake_dists.install(monkeypatch, dist("good-dist", ep("good", lambda: plugin), other_group))
    pm = get_plugin_manager()
    assert pm.get_plugin("good") is plugin
    assert pm.origins["good"].kind == "entry point"
    assert pm.origins["good"].source.startswith("good-dist 1.2.3: ")
    assert pm.plugin_hooks("good") == ["rlix_bump_completed"]
    assert "rlix_bump_completed" in pm.live_hooks()
    assert not pm.has_plugin("not-ours"), "entry points of other groups are ignored"


def test_broken_plugin_is_logged_by_name_and_others_still_load(autoload_env, monkeypatch, caplog):
    plugin = GoodPlugin()
    fake_dists.install(
        monkeypatch,
        dist("broken-dist", ep("broken", _broken)),
        dist("good-dist", ep("good", lambda: plugin)),
    )
    with caplog.at_level(logging.ERROR, logger="rlix_plugin"):
        pm = get_plugin_manager()
    assert pm.has_plugin("good")
    assert not pm.has_plugin("broken")
    assert "broken" in pm.load_errors and "missing_dep" in pm.load_errors["broken"]
    assert any("'broken'" in r.getMessage() and "broken-dist" in r.getMessage() for r in caplog.records)


def test_unknown_hook_plugin_is_rejected_by_name(autoload_env, monkeypatch):
    fake_dists.install(monkeypatch, dist("typo-dist", ep("typo", UnknownHookPlugin)))
    pm = get_plugin_manager()
    assert not pm.has_plugin("typo")
    assert "rlix_bump_complete" in pm.load_errors["typo"]


def test_strict_mode_reraises(autoload_env, monkeypatch):
    fake_dists.install(monkeypatch, dist("broken-dist", ep("broken", _broken)))
    monkeypatch.setenv("RLIX_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="'broken'.*missing_dep"):
        get_plugin_manager()
    with pytest.raises(PluginLoadError):
        get_plugin_manager(strict=True, autoload=True)


def test_blocked_plugin_is_not_loaded(autoload_env, monkeypatch):
    loaded = []
    fake_dists.install(monkeypatch, dist("d", ep("blockme", lambda: loaded.append(1) or GoodPlugin())))
    monkeypatch.setenv("RLIX_BLOCK_PLUGINS", " other , blockme")
    pm = get_plugin_manager()
    assert not pm.has_plugin("blockme")
    assert loaded == [], "a blocked entry point is never imported"
    assert pm.is_blocked("other")


def test_disable_autoload(monkeypatch):
    fake_dists.install(monkeypatch, dist("good-dist", ep("good", GoodPlugin)))
    monkeypatch.setenv("RLIX_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert not get_plugin_manager().has_plugin("good")
    assert get_plugin_manager(autoload=True).has_plugin("good"), "the argument overrides the env"


def test_duplicate_entry_point_name_loads_once(autoload_env, monkeypatch):
    first, second = GoodPlugin(), GoodPlugin()
    fake_dists.install(monkeypatch, dist("a", ep("same", lambda: first)), dist("b", ep("same", lambda: second)))
    pm = get_plugin_manager()
    assert pm.get_plugin("same") is first
    assert not pm.load_errors


def test_unknown_backend_lists_choices(monkeypatch):
    with pytest.raises(InvalidRequestError, match=r"'gpu-magic'.*local, noop, ray"):
        get_plugin_manager("gpu-magic", autoload=False)
    monkeypatch.setenv("RLIX_BACKEND", "nope")
    with pytest.raises(InvalidRequestError, match="'nope'"):
        get_plugin_manager(autoload=False)


def test_unavailable_backend_says_what_to_install(monkeypatch):
    from rlix_plugin import backends

    monkeypatch.setitem(
        backends.BACKENDS, "ray", ("rlix_plugin.backends._not_there", "make_backend", "rlix-plugin[ray]")
    )
    with pytest.raises(BackendUnavailableError, match=r"'ray' is not available.*rlix-plugin\[ray\]"):
        get_plugin_manager("ray", autoload=False)


def test_backend_from_env_is_case_insensitive(monkeypatch, own_process_wide_scheduler):
    monkeypatch.setenv("RLIX_BACKEND", " Local ")  # not the default (noop): read, trimmed, lowered
    pm = get_plugin_manager(autoload=False)
    try:
        assert pm.backend_name == "local"
    finally:
        pm.backend.close()


def test_trace_logs_calls_and_results(monkeypatch, caplog):
    monkeypatch.setenv("RLIX_TRACE_HOOKS", "1")
    pm = get_plugin_manager(autoload=False)
    with caplog.at_level(logging.INFO, logger="rlix_plugin.trace"):
        pm.hook.rlix_release(pipeline_id="p", cluster="actor_train")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("call rlix_release(") and "'pipeline_id': 'p'" in m for m in messages)
    assert any(m.startswith("return rlix_release") for m in messages)
