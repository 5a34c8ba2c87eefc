"""Scenarios: a logical GPU pool and the pipelines that share it, as the live reference run
(``rlix-plugin demo`` / ``run``) and the simulator (``rlix-plugin simulate``) both read them.

* :mod:`.format` -- the TOML format, loaded into frozen dataclasses and validated (re-exported
  here: ``from rlix_plugin.scenario import Scenario, load_scenario``);
* :mod:`.model_sizes` -- the model-size classes behind the token workload's defaults;
* :mod:`.workload` -- the work a scenario asks for (deterministic draws) and its lower bound;
* :mod:`.static` -- the static-partition baseline of a scenario;
* ``scenarios/*.toml`` -- the bundled live scenarios (``seed``, ``long_tail``, ...).

Layer (docs/design.md §2): above the scheduler core, below the simulator and the reference
framework, so that both read one format. It may import :mod:`rlix_plugin.hookspecs` and
:mod:`rlix_plugin.scheduler.policy` (the policy names a scenario may choose), nothing else of the
package. Importing it is cheap (no torch, no Ray).
"""

from __future__ import annotations

from .format import (
    BUNDLED_DIR,
    BUNDLED_PACKAGE,
    DEFAULT_SCENARIO,
    DecodeModel,
    PipelineConfig,
    ResponseLengths,
    SampleTime,
    Scenario,
    ScenarioError,
    bundled_scenario,
    bundled_scenarios,
    check_live,
    load_scenario,
    parse_scenario,
)

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_PACKAGE",
    "DEFAULT_SCENARIO",
    "DecodeModel",
    "PipelineConfig",
    "ResponseLengths",
    "SampleTime",
    "Scenario",
    "ScenarioError",
    "bundled_scenario",
    "bundled_scenarios",
    "check_live",
    "load_scenario",
    "parse_scenario",
]
