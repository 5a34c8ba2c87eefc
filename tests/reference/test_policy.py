"""The toy task is learnable: a few REINFORCE steps raise the mean reward."""

from __future__ import annotations

import pytest

from rlix_plugin.reference.framework.policy import Sample, Trainer, WeightStore, load_policy, sample_answer
from rlix_plugin.reference.framework.task import VOCAB, prompts, reward, task_offset


def test_reward_is_one_for_the_target_and_zero_for_the_opposite():
    offset = task_offset(3)
    assert reward(5, (5 + offset) % VOCAB, offset) == 1.0
    assert reward(5, (5 + offset + VOCAB // 2) % VOCAB, offset) == 0.0
    assert 0 < reward(5, (5 + offset + 1) % VOCAB, offset) < 1


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 21])
def test_five_steps_raise_the_mean_reward(seed):
    trainer = Trainer(seed)
    store = WeightStore(trainer.model)
    offset = task_offset(seed)
    means = []
    for rollout in range(5):
        version, state = store.latest()
        policy = load_policy(state)  # what an engine holds
        batch = []
        for index, prompt in enumerate(prompts(seed, rollout, 32)):
            answer = sample_answer(policy, prompt, seed, rollout, index)
            batch.append(Sample(index, prompt, answer, reward(prompt, answer, offset), version, 0))
        means.append(sum(s.reward for s in batch) / len(batch))
        trainer.step(batch)
        assert store.publish(trainer.model) == version + 1
    assert means[-1] > means[0] + 0.1, means


def test_initial_weights_depend_only_on_the_seed():
    a, b, c = Trainer(7).model.state_dict(), Trainer(7).model.state_dict(), Trainer(8).model.state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)
