"""The toy task: "answer with the prompt shifted by a secret offset".

A prompt is a token ``a`` in ``0..VOCAB-1``; the policy answers with a token ``y``; the secret
target is ``(a + offset) % VOCAB`` with ``offset`` fixed per pipeline (from its seed), so each
pipeline of a scenario learns its own mapping. The reward is dense, ``1 - d / (VOCAB / 2)`` where
``d`` is the circular distance between ``y`` and the target: 1.0 for the right answer, 0.0 for the
opposite one, about 0.5 for a uniformly random policy. Dense rewards make the policy gradient
informative from the first rollout, so a few REINFORCE steps visibly raise the mean reward.
"""

from __future__ import annotations

import random

VOCAB = 8


def task_offset(seed: int) -> int:
    """The pipeline's secret offset (never 0, so the identity map is wrong)."""
    return 1 + seed % (VOCAB - 1)


def prompts(seed: int, rollout: int, count: int) -> list[int]:
    """The prompts of one rollout: a pure function of (seed, rollout)."""
    rng = random.Random(f"rlix-reference/prompts/{seed}/{rollout}")
    return [rng.randrange(VOCAB) for _ in range(count)]


def reward(prompt: int, answer: int, offset: int) -> float:
    """Dense reward in [0, 1]: how close ``answer`` is to the target, on the circle of tokens."""
    target = (prompt + offset) % VOCAB
    distance = abs(answer - target)
    distance = min(distance, VOCAB - distance)
    return 1.0 - distance / (VOCAB / 2)


__all__ = ["VOCAB", "prompts", "reward", "task_offset"]
