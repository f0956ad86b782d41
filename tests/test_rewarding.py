"""Combining reward functions on a rollout: weights, None, NaN, and a reward that raises."""

import math

import pytest
import torch

from mmpost.rewarding import score_rollout
from mmpost.rewards.text import code_block, length
from mmpost.types import Rollout


def make_rollout(outputs):
    n = len(outputs)
    return Rollout(logprobs=torch.zeros(n, 2), mask=torch.ones(n, 2), group=torch.zeros(n, dtype=torch.long),
                   outputs=outputs, prompts=["p"] * n, columns={"answer": ["x"] * n}, actions=None)


def test_weighted_sum_with_none_and_nan():
    rollout = make_rollout(["a", "bb", "ccc"])
    rewards = {"one": lambda prompts, completions, **kw: [1.0, None, None],
               "two": lambda prompts, completions, **kw: [2.0, float("nan"), None]}
    metrics = score_rollout(rollout, rewards, {"one": 1.0, "two": 0.5})
    # row 0: 1*1 + 0.5*2 = 2; row 1: only NaN/None -> unscorable; row 2: all None -> unscorable
    assert rollout.rewards[0].item() == 2.0
    assert math.isnan(rollout.rewards[1].item()) and math.isnan(rollout.rewards[2].item())
    assert metrics["reward/one/mean"] == 1.0 and metrics["reward/two/mean"] == 2.0
    assert rollout.reward_components["two"] == [2.0, None, None]


def test_raising_reward_is_contained():
    rollout = make_rollout(["a", "b"])

    def broken(prompts, completions, **kw):
        raise RuntimeError("boom")

    metrics = score_rollout(rollout, {"ok": lambda prompts, completions, **kw: [0.5, 1.0], "broken": broken}, {})
    assert rollout.rewards.tolist() == [0.5, 1.0]
    assert metrics["reward/broken/errors"] == 2.0


def test_wrong_length_is_contained():
    rollout = make_rollout(["a", "b"])
    metrics = score_rollout(rollout, {"short": lambda prompts, completions, **kw: [1.0]}, {})
    assert metrics["reward/short/errors"] == 2.0 and torch.isnan(rollout.rewards).all()


def test_text_rewards_by_hand():
    assert length(["p"], ["abcd"], target=8) == [0.5]
    assert length(["p"], [[{"role": "assistant", "content": "x" * 300}]]) == [1.0]  # conversational, capped
    assert code_block(["p", "p"], ["```python\nx = 1\n```", "x = 1"]) == [1.0, 0.0]
