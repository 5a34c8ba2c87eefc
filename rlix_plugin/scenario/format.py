"""Scenario files: the TOML format, loaded into plain frozen dataclasses and validated.

One format serves the live reference framework (``rlix-plugin run``) and the simulator
(``rlix-plugin simulate``). A scenario describes a logical GPU pool and the pipelines that share
it::

    name = "seed"                      # optional
    description = "..."                # optional

    [cluster]
    gpus = 4
    gpus_per_node = 4

    [[pipeline]]
    name = "P1"
    train_gpus = [0, 1]                # or a count: the GPUs after the previous pipeline's
    infer_gpus = [0, 1, 2, 3]          # or "all": the whole pool
    infer_tp = 1
    rollouts = 5
    samples_per_rollout = 32
    sample_seconds = { median = 0.1, sigma = 0.8 }   # lognormal per-sample generation time
    train_seconds = 0.4
    start_delay_seconds = 0.0          # optional
    wake_seconds = 0.1                 # optional: resume an engine and load its weights
    sleep_seconds = 0.1                # optional: pause, retract and release an engine
    sync_seconds = 0.05                # optional: weight sync into an awake engine after training
    model = "7b"                       # optional: a model-size class, the default of the three above
    replicas = 1                       # optional: this many pipelines, named NAME-1 .. NAME-N
    seed = 1                           # optional (default: the pipeline's position, from 1)

The *token workload* (simulator only) replaces ``samples_per_rollout`` and ``sample_seconds``
with an RL post-training step: ``prompts`` x ``samples_per_prompt`` responses whose lengths are
drawn from ``response_tokens = { median, sigma, prompt_sigma, cap }``, decoded by engines that run
``decode = { tokens_per_s, batch, half_speed_at }``, and a training time of ``train_seconds`` plus
``train_gpu_seconds_per_ktoken`` per 1,000 generated tokens over the training GPUs;
``stop_after_seconds`` stops a pipeline early. Defaults come from the model-size class
(:mod:`.model_sizes`); docs/simulate.md documents each with its source. The live runner refuses
these fields (:func:`check_live`).

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

from .model_sizes import (
    DEFAULT_BATCH,
    DEFAULT_HALF_SPEED_AT,
    DEFAULT_PROMPT_SIGMA,
    DEFAULT_RESPONSE_CAP,
    DEFAULT_RESPONSE_MEDIAN,
    DEFAULT_RESPONSE_SIGMA,
    MODEL_SIZES,
    ModelSize,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: Same rule the scheduler applies to pipeline ids; checked here to name the field.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
BUNDLED_PACKAGE = "rlix_plugin.scenario"
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
class ResponseLengths:
    """Response lengths in tokens. Each prompt's median is drawn log-normally around ``median``
    (log-space spread ``prompt_sigma``: some prompts call for long answers); each of its samples
    is drawn log-normally around that (``sigma``: samples of one prompt are correlated), and
    truncated at ``cap``."""

    median: float
    sigma: float
    prompt_sigma: float
    cap: int


@dataclass(frozen=True)
class DecodeModel:
    """One engine decodes up to ``batch`` sequences at once. A decode step reads the weights once
    for every sequence and each sequence's KV cache, so its time grows linearly with the
    sequences in it: with ``n`` at once, each decodes ``tokens_per_s / (1 + (n - 1) /
    half_speed_at)`` tokens a second (``tokens_per_s`` alone, half that at ``half_speed_at + 1``)
    and the engine as a whole saturates at ``tokens_per_s x half_speed_at``."""

    tokens_per_s: float
    batch: int
    half_speed_at: float

    def rate(self, running: int) -> float:
        """Tokens a second of each of ``running`` sequences decoding together."""
        return self.tokens_per_s / (1.0 + (running - 1) / self.half_speed_at)


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline of a scenario (all times in scenario seconds, before any time scaling).

    ``sample_seconds`` is None for a token workload (``response_tokens`` set), whose
    ``samples_per_rollout`` is ``prompts x samples_per_prompt``.
    """

    name: str
    train_gpus: tuple[int, ...]
    infer_gpus: tuple[int, ...]
    infer_tp: int
    rollouts: int
    samples_per_rollout: int
    sample_seconds: SampleTime | None
    train_seconds: float
    start_delay_seconds: float = 0.0
    seed: int = 1
    #: Switch costs of one engine (see :class:`~rlix_plugin.hookspecs.SwitchCosts`).
    wake_seconds: float = 0.0
    sleep_seconds: float = 0.0
    sync_seconds: float = 0.0
    #: The model-size class the defaults came from (:mod:`.model_sizes`), if any.
    model: str | None = None
    # -- the token workload (simulator only) --------------------------------------------------------
    prompts: int | None = None
    samples_per_prompt: int | None = None
    response_tokens: ResponseLengths | None = None
    decode: DecodeModel | None = None
    #: Training GPU-seconds per 1,000 generated tokens of the step, spread over ``train_gpus``.
    train_gpu_seconds_per_ktoken: float = 0.0
    #: The pipeline is stopped this long after it starts, finished or not (None: never).
    stop_after_seconds: float | None = None

    @property
    def dp_size(self) -> int:
        return len(self.infer_gpus) // self.infer_tp

    @property
    def token_workload(self) -> bool:
        return self.response_tokens is not None

    @property
    def switch_costs(self) -> SwitchCosts:
        return SwitchCosts(self.wake_seconds, self.sleep_seconds, self.sync_seconds)

    def scaled(self, factor: float) -> PipelineConfig:
        """The same pipeline with its switch costs multiplied by ``factor``."""
        return replace(
            self,
            wake_seconds=self.wake_seconds * factor,
            sleep_seconds=self.sleep_seconds * factor,
            sync_seconds=self.sync_seconds * factor,
        )

    def train_seconds_for(self, tokens: float) -> float:
        """How long one training step on ``tokens`` generated tokens holds the training GPUs."""
        per_gpu = self.train_gpu_seconds_per_ktoken * tokens / 1000.0 / len(self.train_gpus)
        return self.train_seconds + per_gpu

    def live_unsupported(self) -> list[str]:
        """The fields set here that only the simulator honours."""
        fields = [key for key in _SIMULATED_ONLY if getattr(self, key) not in (None, 0.0)]
        return fields

    def bundles(self) -> list[tuple[int, ...]]:
        """GPU ids of each generation DP rank, in rank order."""
        tp = self.infer_tp
        return [self.infer_gpus[i : i + tp] for i in range(0, len(self.infer_gpus), tp)]


#: Fields of the token workload: the live reference framework cannot honour them.
_SIMULATED_ONLY = (
    "prompts",
    "samples_per_prompt",
    "response_tokens",
    "decode",
    "train_gpu_seconds_per_ktoken",
    "stop_after_seconds",
)


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

    def with_seed(self, offset: int) -> Scenario:
        """Every pipeline's seed shifted by ``offset``: another draw of the same workload."""
        return replace(self, pipelines=tuple(replace(p, seed=p.seed + offset) for p in self.pipelines))

    def scaled(self, factor: float) -> Scenario:
        """Every duration of the reference workload multiplied by ``factor`` (what the live
        runner's ``time_scale`` does): sample times, training, start delays, switch costs."""

        def one(p: PipelineConfig) -> PipelineConfig:
            sample = p.sample_seconds
            return replace(
                p.scaled(factor),
                sample_seconds=None if sample is None else SampleTime(sample.median * factor, sample.sigma),
                train_seconds=p.train_seconds * factor,
                start_delay_seconds=p.start_delay_seconds * factor,
            )

        return replace(self, pipelines=tuple(one(p) for p in self.pipelines))


def check_live(scenario: Scenario) -> None:
    """Refuse a scenario the live reference framework cannot run as written.

    :raises ScenarioError: naming the pipeline and the first simulator-only field it sets.
    """
    for pipeline in scenario.pipelines:
        fields = pipeline.live_unsupported()
        if fields:
            raise ScenarioError(
                f"scenario {scenario.source}: pipeline {pipeline.name!r}: field {fields[0]!r} is for "
                "`rlix-plugin simulate` only: the live reference framework generates each sample for its "
                "sample_seconds, one at a time per engine, and runs every rollout it is given"
            )


_TOP_KEYS = {"name", "description", "policy", "cluster", "pipeline"}
_CLUSTER_KEYS = {"gpus", "gpus_per_node"}
_PIPELINE_REQUIRED = {"name", "train_gpus", "infer_gpus", "infer_tp", "rollouts"}
_REFERENCE_REQUIRED = {"samples_per_rollout", "sample_seconds", "train_seconds"}
_TOKEN_REQUIRED = {"response_tokens", "prompts", "samples_per_prompt"}
_TOKEN_OPTIONAL = {"decode", "train_seconds", "train_gpu_seconds_per_ktoken"}
_PIPELINE_OPTIONAL = {
    "start_delay_seconds",
    "seed",
    "wake_seconds",
    "sleep_seconds",
    "sync_seconds",
    "model",
    "replicas",
    "stop_after_seconds",
}


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
        if len(set(value)) != len(value):
            duplicates = sorted({g for g in value if value.count(g) > 1})
            raise self.fail(where, f"duplicate GPU ids {duplicates}")
        return tuple(value)


class _Layout:
    """Resolves the short forms of GPU mappings: ``train_gpus = N`` takes the ``N`` GPUs after the
    previous pipeline's training mapping (from GPU 0 for the first), ``infer_gpus = "all"`` the
    whole pool."""

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus
        self.next_train = 0

    def train(self, check: _Checker, value: Any, where: str) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            count = check.int_(value, where, 1)
            first = self.next_train
            if first + count > self.gpus:
                raise check.fail(where, f"{count} GPUs after GPU {first - 1} do not fit in the pool of {self.gpus}")
            gpus = tuple(range(first, first + count))
        else:
            gpus = check.gpu_list(value, where, self.gpus)
        self.next_train = max(gpus) + 1
        return gpus

    def infer(self, check: _Checker, value: Any, where: str) -> tuple[int, ...]:
        if value == "all":
            return tuple(range(self.gpus))
        return check.gpu_list(value, where, self.gpus)


def _model_size(check: _Checker, table: dict[str, Any], where: str) -> ModelSize | None:
    name = table.get("model")
    if name is None:
        return None
    size = MODEL_SIZES.get(name) if isinstance(name, str) else None
    if size is None:
        raise check.fail(
            f"{where}: field 'model'", f"unknown model-size class {name!r}; known: {', '.join(MODEL_SIZES)}"
        )
    return size


def _default(
    check: _Checker,
    table: dict[str, Any],
    key: str,
    label: str,
    size: ModelSize | None,
    attribute: str,
    positive: bool = False,
) -> float:
    """A number field (``label`` names it in errors): its value, else the model-size class's,
    else an error naming both."""
    if key in table:
        return check.seconds(table[key], label, positive=positive)
    if size is None:
        raise check.fail(label, "missing, and no model-size class ('model = ...') to default it")
    return getattr(size, attribute)


def _token_workload(check: _Checker, table: dict[str, Any], where: str, size: ModelSize | None) -> dict[str, Any]:
    lengths_where = f"{where}: field 'response_tokens'"
    lengths = check.keys(table["response_tokens"], lengths_where, set(), {"median", "sigma", "prompt_sigma", "cap"})
    decode_where = f"{where}: field 'decode'"
    decode = check.keys(table.get("decode", {}), decode_where, set(), {"tokens_per_s", "batch", "half_speed_at"})
    prompts = check.int_(table["prompts"], f"{where}: field 'prompts'", 1)
    per_prompt = check.int_(table["samples_per_prompt"], f"{where}: field 'samples_per_prompt'", 1)
    return dict(
        prompts=prompts,
        samples_per_prompt=per_prompt,
        samples_per_rollout=prompts * per_prompt,
        sample_seconds=None,
        response_tokens=ResponseLengths(
            median=check.seconds(lengths.get("median", DEFAULT_RESPONSE_MEDIAN), f"{lengths_where}.median", True),
            sigma=check.seconds(lengths.get("sigma", DEFAULT_RESPONSE_SIGMA), f"{lengths_where}.sigma", False),
            prompt_sigma=check.seconds(
                lengths.get("prompt_sigma", DEFAULT_PROMPT_SIGMA), f"{lengths_where}.prompt_sigma", False
            ),
            cap=check.int_(lengths.get("cap", DEFAULT_RESPONSE_CAP), f"{lengths_where}.cap", 1),
        ),
        decode=DecodeModel(
            tokens_per_s=_default(
                check, decode, "tokens_per_s", f"{decode_where}.tokens_per_s", size, "tokens_per_s", positive=True
            ),
            batch=check.int_(decode.get("batch", DEFAULT_BATCH), f"{decode_where}.batch", 1),
            half_speed_at=check.seconds(
                decode.get("half_speed_at", DEFAULT_HALF_SPEED_AT), f"{decode_where}.half_speed_at", True
            ),
        ),
        train_seconds=check.seconds(table.get("train_seconds", 0.0), f"{where}: field 'train_seconds'", False),
        train_gpu_seconds_per_ktoken=_default(
            check,
            table,
            "train_gpu_seconds_per_ktoken",
            f"{where}: field 'train_gpu_seconds_per_ktoken'",
            size,
            "train_gpu_s_per_ktoken",
        ),
    )


def _reference_workload(check: _Checker, table: dict[str, Any], where: str) -> dict[str, Any]:
    sample = table["sample_seconds"]
    sample_where = f"{where}: field 'sample_seconds'"
    check.keys(sample, sample_where, {"median", "sigma"}, set())
    return dict(
        samples_per_rollout=check.int_(table["samples_per_rollout"], f"{where}: field 'samples_per_rollout'", 1),
        sample_seconds=SampleTime(
            median=check.seconds(sample["median"], f"{sample_where}.median", positive=True),
            sigma=check.seconds(sample["sigma"], f"{sample_where}.sigma", positive=False),
        ),
        train_seconds=check.seconds(table["train_seconds"], f"{where}: field 'train_seconds'", positive=False),
    )


def _pipelines(check: _Checker, raw: Any, index: int, layout: _Layout, per_node: int) -> list[PipelineConfig]:
    """The pipelines of one ``[[pipeline]]`` table (``replicas`` of them); ``index`` is the
    position of the first in the scenario."""
    where = f"pipeline #{index + 1}"
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        where = f"pipeline {raw['name']!r}"
    tokens = isinstance(raw, dict) and "response_tokens" in raw
    required = _PIPELINE_REQUIRED | (_TOKEN_REQUIRED if tokens else _REFERENCE_REQUIRED)
    table = check.keys(raw, where, required, _PIPELINE_OPTIONAL | (_TOKEN_OPTIONAL if tokens else set()))
    name = table["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise check.fail(
            f"{where}: field 'name'", "must be 1-64 letters, digits or '_.-', starting with a letter or digit"
        )
    replicas = check.int_(table.get("replicas", 1), f"{where}: field 'replicas'", 1)
    tp = check.int_(table["infer_tp"], f"{where}: field 'infer_tp'", 1)
    infer = layout.infer(check, table["infer_gpus"], f"{where}: field 'infer_gpus'")
    if len(infer) % tp:
        raise check.fail(
            f"{where}: field 'infer_gpus'", f"{len(infer)} GPUs do not split into TP groups of infer_tp={tp}"
        )
    for start in range(0, len(infer), tp):
        group = infer[start : start + tp]
        if list(group) != list(range(group[0], group[0] + tp)):
            raise check.fail(f"{where}: field 'infer_gpus'", f"TP group {list(group)} is not contiguous")
        if group[0] // per_node != group[-1] // per_node:
            raise check.fail(
                f"{where}: field 'infer_gpus'",
                f"TP group {list(group)} crosses a node boundary ({per_node} GPUs per node)",
            )
    size = _model_size(check, table, where)
    workload = _token_workload(check, table, where, size) if tokens else _reference_workload(check, table, where)
    switch = {
        key: check.seconds(table[key], f"{where}: field {key!r}", positive=False)
        if key in table
        else (getattr(size, attribute) if size is not None else 0.0)
        for key, attribute in (("wake_seconds", "wake_s"), ("sleep_seconds", "sleep_s"), ("sync_seconds", "sync_s"))
    }
    stop = table.get("stop_after_seconds")
    common = dict(
        infer_gpus=infer,
        infer_tp=tp,
        rollouts=check.int_(table["rollouts"], f"{where}: field 'rollouts'", 1),
        start_delay_seconds=check.seconds(
            table.get("start_delay_seconds", 0.0), f"{where}: field 'start_delay_seconds'", positive=False
        ),
        model=size.name if size is not None else None,
        stop_after_seconds=None if stop is None else check.seconds(stop, f"{where}: field 'stop_after_seconds'", True),
        **switch,
        **workload,
    )
    seed = check.int_(table.get("seed", index + 1), f"{where}: field 'seed'", 0)
    out = []
    for k in range(replicas):
        train = layout.train(check, table["train_gpus"], f"{where}: field 'train_gpus'")
        out.append(
            PipelineConfig(
                name=name if replicas == 1 else f"{name}-{k + 1}",
                train_gpus=train,
                seed=seed + k,
                **common,
            )
        )
    return out


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
    layout = _Layout(gpus)
    expanded: list[PipelineConfig] = []
    for entry in entries:
        expanded.extend(_pipelines(check, entry, len(expanded), layout, per_node))
    pipelines = tuple(expanded)
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


def load_scenario(path: str | pathlib.Path, packages: tuple[str, ...] = (BUNDLED_PACKAGE,)) -> Scenario:
    """Load a scenario file, or a scenario bundled in one of ``packages`` by name (``seed``,
    ``long_tail``, ...; the simulator also looks in ``rlix_plugin.simulate``'s)."""
    candidate = pathlib.Path(path)
    if candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"scenario {candidate}: cannot read: {exc}") from None
        return parse_scenario(text, str(candidate))
    name = str(path)
    for package in packages:
        if name in bundled_scenarios(package):
            return bundled_scenario(name, package)
    known = [n for package in packages for n in bundled_scenarios(package)]
    raise ScenarioError(f"scenario {path}: no such file, and not a bundled scenario (bundled: {', '.join(known)})")


def bundled_scenarios(package: str = BUNDLED_PACKAGE) -> list[str]:
    """Names of the scenarios shipped in ``package`` (by default the live ones)."""
    folder = resources.files(package).joinpath(BUNDLED_DIR)
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def bundled_scenario(name: str = DEFAULT_SCENARIO, package: str = BUNDLED_PACKAGE) -> Scenario:
    resource = resources.files(package).joinpath(BUNDLED_DIR).joinpath(f"{name}.toml")
    if not resource.is_file():
        raise ScenarioError(f"no bundled scenario {name!r} (bundled: {', '.join(bundled_scenarios(package))})")
    return parse_scenario(resource.read_text(encoding="utf-8"), f"{name}.toml")


__all__ = [
    "DEFAULT_SCENARIO",
    "PipelineConfig",
    "SampleTime",
    "Scenario",
    "ScenarioError",
    "DecodeModel",
    "ResponseLengths",
    "bundled_scenario",
    "bundled_scenarios",
    "check_live",
    "load_scenario",
    "parse_scenario",
]
