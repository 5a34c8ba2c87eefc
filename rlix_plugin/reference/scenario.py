"""Scenario files: the TOML format, loaded into plain frozen dataclasses and validated.

A scenario describes a logical GPU pool and the pipelines that share it::

    name = "seed"                      # optional
    description = "..."                # optional

    [cluster]
    gpus = 4
    gpus_per_node = 4

    [[pipeline]]
    name = "P1"
    train_gpus = [0, 1]
    infer_gpus = [0, 1, 2, 3]
    infer_tp = 1
    rollouts = 5
    samples_per_rollout = 32
    sample_seconds = { median = 0.1, sigma = 0.8 }   # lognormal per-sample generation time
    train_seconds = 0.4
    start_delay_seconds = 0.0          # optional
    wake_seconds = 0.1                 # optional: resume an engine and load its weights (default 0)
    sleep_seconds = 0.1                # optional: pause, retract and release an engine (default 0)
    sync_seconds = 0.05                # optional: weight sync into an awake engine after training
    seed = 1                           # optional (default: the pipeline's position, from 1)

Contract: :func:`load_scenario` / :func:`parse_scenario` return a valid :class:`Scenario` or raise
:class:`ScenarioError` whose message names the file, the pipeline and the field; unknown keys are
errors too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
import pathlib
import re
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from rlix_plugin.hookspecs import InvalidRequestError, SwitchCosts
from rlix_plugin.scheduler.policy import DEFAULT_POLICY, POLICIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: Same rule the scheduler applies to pipeline ids; checked here to name the field.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
BUNDLED_PACKAGE = "rlix_plugin.reference"
BUNDLED_DIR = "scenarios"
DEFAULT_SCENARIO = "seed"


class ScenarioError(InvalidRequestError):
    """A scenario file is unreadable or invalid; the message names the pipeline and the field."""


@dataclass(frozen=True)
class SampleTime:
    """Lognormal per-sample generation time: ``median`` seconds, log-space spread ``sigma``."""

    median: float
    sigma: float


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline of a scenario (all times in scenario seconds, before any time scaling)."""

    name: str
    train_gpus: tuple[int, ...]
    infer_gpus: tuple[int, ...]
    infer_tp: int
    rollouts: int
    samples_per_rollout: int
    sample_seconds: SampleTime
    train_seconds: float
    start_delay_seconds: float = 0.0
    seed: int = 1
    #: Switch costs of one engine (see :class:`~rlix_plugin.hookspecs.SwitchCosts`).
    wake_seconds: float = 0.0
    sleep_seconds: float = 0.0
    sync_seconds: float = 0.0

    @property
    def dp_size(self) -> int:
        return len(self.infer_gpus) // self.infer_tp

    @property
    def switch_costs(self) -> SwitchCosts:
        return SwitchCosts(self.wake_seconds, self.sleep_seconds, self.sync_seconds)

    def scaled(self, factor: float) -> PipelineConfig:
        """The same pipeline with its switch costs multiplied by ``factor``."""
        return replace(self, wake_seconds=self.wake_seconds * factor, sleep_seconds=self.sleep_seconds * factor,
                       sync_seconds=self.sync_seconds * factor)

    def bundles(self) -> list[tuple[int, ...]]:
        """GPU ids of each generation DP rank, in rank order."""
        tp = self.infer_tp
        return [self.infer_gpus[i : i + tp] for i in range(0, len(self.infer_gpus), tp)]


@dataclass(frozen=True)
class Scenario:
    name: str
    gpus: int
    gpus_per_node: int
    pipelines: tuple[PipelineConfig, ...]
    description: str = ""
    #: The sharing policy of the scheduler (see :mod:`rlix_plugin.scheduler.policy`).
    policy: str = DEFAULT_POLICY
    source: str = field(default="<string>", compare=False)

    def with_pipelines(self, pipelines: tuple[PipelineConfig, ...], name: str | None = None) -> Scenario:
        return replace(self, pipelines=pipelines, name=name or self.name)

    def with_switch_costs(self, factor: float) -> Scenario:
        """Every pipeline's wake, sleep and sync seconds multiplied by ``factor`` (0: free)."""
        return replace(self, pipelines=tuple(p.scaled(factor) for p in self.pipelines))

    def with_policy(self, policy: str) -> Scenario:
        if policy not in POLICIES:
            raise ScenarioError(f"unknown sharing policy {policy!r}; known: {', '.join(POLICIES)}")
        return replace(self, policy=policy)


_TOP_KEYS = {"name", "description", "policy", "cluster", "pipeline"}
_CLUSTER_KEYS = {"gpus", "gpus_per_node"}
_PIPELINE_REQUIRED = {
    "name", "train_gpus", "infer_gpus", "infer_tp", "rollouts", "samples_per_rollout",
    "sample_seconds", "train_seconds",
}
_PIPELINE_OPTIONAL = {"start_delay_seconds", "seed", "wake_seconds", "sleep_seconds", "sync_seconds"}


class _Checker:
    """Field checks that raise :class:`ScenarioError` with the file and pipeline in the message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ScenarioError:
        return ScenarioError(f"scenario {self.source}: {where}: {message}")

    def keys(self, table: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where, f"expected a table, got {table!r}")
        unknown = sorted(set(table) - required - optional)
        if unknown:
            raise self.fail(where, f"unknown field(s) {unknown}; known: {sorted(required | optional)}")
        missing = sorted(required - set(table))
        if missing:
            raise self.fail(where, f"missing field(s) {missing}")
        return table

    def int_(self, value: Any, where: str, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(where, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def seconds(self, value: Any, where: str, positive: bool) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            raise self.fail(where, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        return float(value)

    def gpu_list(self, value: Any, where: str, pool: int) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"must be a non-empty list of GPU ids, got {value!r}")
        for gpu in value:
            if not isinstance(gpu, int) or isinstance(gpu, bool) or not 0 <= gpu < pool:
                raise self.fail(where, f"GPU id {gpu!r} is outside the pool 0..{pool - 1}")
        duplicates = sorted({g for g in value if value.count(g) > 1})
        if duplicates:
            raise self.fail(where, f"duplicate GPU ids {duplicates}")
        return tuple(value)


def _pipeline(check: _Checker, raw: Any, index: int, gpus: int, per_node: int) -> PipelineConfig:
    where = f"pipeline #{index + 1}"
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        where = f"pipeline {raw['name']!r}"
    table = check.keys(raw, where, _PIPELINE_REQUIRED, _PIPELINE_OPTIONAL)
    name = table["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise check.fail(f"{where}: field 'name'", "must be 1-64 letters, digits or '_.-', starting with a letter or digit")
    train = check.gpu_list(table["train_gpus"], f"{where}: field 'train_gpus'", gpus)
    infer = check.gpu_list(table["infer_gpus"], f"{where}: field 'infer_gpus'", gpus)
    tp = check.int_(table["infer_tp"], f"{where}: field 'infer_tp'", 1)
    if len(infer) % tp:
        raise check.fail(f"{where}: field 'infer_gpus'", f"{len(infer)} GPUs do not split into TP groups of infer_tp={tp}")
    for start in range(0, len(infer), tp):
        group = infer[start : start + tp]
        if list(group) != list(range(group[0], group[0] + tp)):
            raise check.fail(f"{where}: field 'infer_gpus'", f"TP group {list(group)} is not contiguous")
        if group[0] // per_node != group[-1] // per_node:
            raise check.fail(f"{where}: field 'infer_gpus'",
                             f"TP group {list(group)} crosses a node boundary ({per_node} GPUs per node)")
    sample = table["sample_seconds"]
    sample_where = f"{where}: field 'sample_seconds'"
    check.keys(sample, sample_where, {"median", "sigma"}, set())
    return PipelineConfig(
        name=name,
        train_gpus=train,
        infer_gpus=infer,
        infer_tp=tp,
        rollouts=check.int_(table["rollouts"], f"{where}: field 'rollouts'", 1),
        samples_per_rollout=check.int_(table["samples_per_rollout"], f"{where}: field 'samples_per_rollout'", 1),
        sample_seconds=SampleTime(
            median=check.seconds(sample["median"], f"{sample_where}.median", positive=True),
            sigma=check.seconds(sample["sigma"], f"{sample_where}.sigma", positive=False),
        ),
        train_seconds=check.seconds(table["train_seconds"], f"{where}: field 'train_seconds'", positive=False),
        start_delay_seconds=check.seconds(
            table.get("start_delay_seconds", 0.0), f"{where}: field 'start_delay_seconds'", positive=False
        ),
        seed=check.int_(table.get("seed", index + 1), f"{where}: field 'seed'", 0),
        **{key: check.seconds(table.get(key, 0.0), f"{where}: field {key!r}", positive=False)
           for key in ("wake_seconds", "sleep_seconds", "sync_seconds")},
    )


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML text. ``source`` names it in error messages."""
    check = _Checker(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source}: not valid TOML: {exc}") from None
    check.keys(raw, "top level", {"cluster", "pipeline"}, _TOP_KEYS - {"cluster", "pipeline"})
    cluster = check.keys(raw["cluster"], "[cluster]", _CLUSTER_KEYS, set())
    gpus = check.int_(cluster["gpus"], "[cluster]: field 'gpus'", 1)
    per_node = check.int_(cluster["gpus_per_node"], "[cluster]: field 'gpus_per_node'", 1)
    entries = raw["pipeline"]
    if not isinstance(entries, list) or not entries:
        raise check.fail("[[pipeline]]", "at least one [[pipeline]] table is required")
    pipelines = tuple(_pipeline(check, entry, i, gpus, per_node) for i, entry in enumerate(entries))
    names = [p.name for p in pipelines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise check.fail("[[pipeline]]", f"duplicate pipeline name(s) {duplicates}")
    for key in ("name", "description", "policy"):
        if key in raw and not isinstance(raw[key], str):
            raise check.fail(f"field {key!r}", f"must be a string, got {raw[key]!r}")
    policy = raw.get("policy", DEFAULT_POLICY)
    if policy not in POLICIES:
        raise check.fail("field 'policy'", f"unknown sharing policy {policy!r}; known: {', '.join(POLICIES)}")
    default_name = pathlib.Path(source).stem if source != "<string>" else "scenario"
    return Scenario(
        name=raw.get("name", default_name),
        description=raw.get("description", ""),
        gpus=gpus,
        gpus_per_node=per_node,
        pipelines=pipelines,
        policy=policy,
        source=source,
    )


def load_scenario(path: str | pathlib.Path) -> Scenario:
    """Load a scenario file, or a bundled scenario by name (``seed``, ``long_tail``, ...)."""
    candidate = pathlib.Path(path)
    if candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"scenario {candidate}: cannot read: {exc}") from None
        return parse_scenario(text, str(candidate))
    name = str(path)
    if name in bundled_scenarios():
        return bundled_scenario(name)
    raise ScenarioError(
        f"scenario {path}: no such file, and not a bundled scenario (bundled: {', '.join(bundled_scenarios())})"
    )


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_DIR)
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def bundled_scenario(name: str = DEFAULT_SCENARIO) -> Scenario:
    resource = resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_DIR).joinpath(f"{name}.toml")
    if not resource.is_file():
        raise ScenarioError(f"no bundled scenario {name!r} (bundled: {', '.join(bundled_scenarios())})")
    return parse_scenario(resource.read_text(encoding="utf-8"), f"{name}.toml")


__all__ = [
    "DEFAULT_SCENARIO",
    "PipelineConfig",
    "SampleTime",
    "Scenario",
    "ScenarioError",
    "bundled_scenario",
    "bundled_scenarios",
    "load_scenario",
    "parse_scenario",
]
