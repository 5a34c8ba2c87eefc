"""Model-size classes: the defaults a scenario's ``model = "..."`` stands for.

Each figure comes from docs/switch-costs.md (published measurements) or is derived from them, as
docs/simulate.md explains line by line. A pipeline's own fields always override its class.

* ``wake_s`` / ``sleep_s``: vLLM level-1 wake and sleep of the class (small models: the top of
  the published 0.1-0.8 s range; sleep taken equal to wake where only wakes are published, as the
  larger classes' figures are about equal);
* ``sync_s``: weight sync after a training step without a checkpoint engine (verl's figures);
* ``tokens_per_s``: decode speed of one sequence alone on one engine (derived: a response at the
  20,480-token cap decoded alone takes the published generation phase of a verl step);
* ``train_gpu_s_per_ktoken``: training GPU-seconds per 1,000 generated tokens (derived from the
  verl 7B step, scaled by active parameters for the others: training FLOPs grow with them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    """Defaults of one model-size class (seconds, tokens per second, GPU-seconds)."""

    name: str
    description: str
    wake_s: float
    sleep_s: float
    sync_s: float
    tokens_per_s: float
    train_gpu_s_per_ktoken: float


MODEL_SIZES: dict[str, ModelSize] = {
    size.name: size
    for size in (
        ModelSize(
            "7b",
            "dense models up to 8B (Qwen2.5-7B)",
            wake_s=0.8,
            sleep_s=0.8,
            sync_s=0.12,
            tokens_per_s=115.0,
            train_gpu_s_per_ktoken=0.93,
        ),
        ModelSize(
            "30b",
            "30B-class MoE, 3B active (Qwen3-30B-A3B)",
            wake_s=2.9,
            sleep_s=2.8,
            sync_s=15.8,
            tokens_per_s=59.0,
            train_gpu_s_per_ktoken=0.40,
        ),
        ModelSize(
            "235b",
            "235B-class MoE, 22B active (Qwen3-235B-A22B)",
            wake_s=5.5,
            sleep_s=5.9,
            sync_s=58.6,
            tokens_per_s=40.0,
            train_gpu_s_per_ktoken=2.92,
        ),
    )
}

#: Response-length defaults (tokens): the DAPO recipe's cap; a spread within a prompt's group in
#: the published 1.0-1.3 range; the per-prompt median's spread and the median itself are derived.
DEFAULT_RESPONSE_CAP = 20480
DEFAULT_RESPONSE_SIGMA = 1.0
DEFAULT_PROMPT_SIGMA = 0.7
DEFAULT_RESPONSE_MEDIAN = 1500.0
#: Decode defaults: vLLM's default ``max_num_seqs``, and the concurrency at which one sequence
#: decodes at half its alone speed (derived: weight reads vs. KV-cache reads per decode step).
DEFAULT_BATCH = 256
DEFAULT_HALF_SPEED_AT = 64.0


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_HALF_SPEED_AT",
    "DEFAULT_PROMPT_SIGMA",
    "DEFAULT_RESPONSE_CAP",
    "DEFAULT_RESPONSE_MEDIAN",
    "DEFAULT_RESPONSE_SIGMA",
    "MODEL_SIZES",
    "ModelSize",
]
