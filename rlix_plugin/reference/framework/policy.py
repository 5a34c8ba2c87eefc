"""The policy (a tiny torch network), its trainer, and the CPU weight store engines load from.

Contracts:

* :class:`WeightStore` holds the latest published weights as a CPU copy with a version number.
  ``publish`` replaces them atomically; ``latest`` returns (version, state) where ``state`` is
  never mutated afterwards (each publish stores a fresh copy), so a reader needs no lock beyond
  the one that picks the pair.
* :class:`Trainer` owns the trainable policy and its optimizer. ``step`` performs one REINFORCE
  update (advantage = reward - batch mean) on the collected samples and returns the loss.
* :func:`sample_answer` draws an answer for one prompt with a generator seeded by the sample's
  identity, so which engine generates a sample never changes its outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .task import VOCAB

HIDDEN = 32
LEARNING_RATE = 0.2


def make_policy() -> torch.nn.Module:
    """prompt token -> logits over answer tokens."""
    return torch.nn.Sequential(torch.nn.Embedding(VOCAB, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, VOCAB))


@dataclass(frozen=True)
class Sample:
    """One finished generation, as the trainer consumes it."""

    index: int
    prompt: int
    answer: int
    reward: float
    weight_version: int
    dp_rank: int


class WeightStore:
    """Latest published policy weights (CPU copy) and their version."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._state = _cpu_copy(model)

    def publish(self, model: torch.nn.Module) -> int:
        """Store a copy of ``model``'s weights as the next version; return that version."""
        state = _cpu_copy(model)
        with self._lock:
            self._version += 1
            self._state = state
            return self._version

    def latest(self) -> tuple[int, dict[str, torch.Tensor]]:
        with self._lock:
            return self._version, self._state


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def _seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Initial weights from a private generator: the global torch RNG is shared by every
    pipeline thread, so seeding it would make initial weights depend on thread timing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                fan_in = param.shape[1] if param.dim() > 1 and not name.startswith("0.") else 1
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


def load_policy(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A fresh inference copy of the policy with ``state`` loaded (what a woken engine holds)."""
    model = make_policy()
    model.load_state_dict(state)
    model.eval()
    return model


def sample_answer(model: torch.nn.Module, prompt: int, seed: int, rollout: int, index: int) -> int:
    generator = torch.Generator().manual_seed(hash((seed, rollout, index)) & 0x7FFF_FFFF)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])), dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator).item())


class Trainer:
    """The trainable policy of one pipeline."""

    def __init__(self, seed: int, learning_rate: float = LEARNING_RATE) -> None:
        self.model = make_policy()
        _seeded_init(self.model, seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)

    def step(self, samples: Sequence[Sample]) -> float:
        """One policy-gradient step on ``samples``; returns the loss."""
        prompts = torch.tensor([s.prompt for s in samples])
        answers = torch.tensor([s.answer for s in samples])
        rewards = torch.tensor([s.reward for s in samples])
        advantage = rewards - rewards.mean()
        logp = torch.log_softmax(self.model(prompts), dim=-1).gather(1, answers[:, None]).squeeze(1)
        loss = -(advantage * logp).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.item())


__all__ = ["HIDDEN", "LEARNING_RATE", "Sample", "Trainer", "WeightStore", "load_policy", "make_policy", "sample_answer"]
