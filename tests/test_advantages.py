import math

import torch

from mmpost.algos.advantages import group_advantages


def test_group_advantages_by_hand():
    # group 0: rewards 1, 0 -> mean 0.5, unbiased std sqrt(0.5)=0.70711 -> +-0.5/(0.70711+1e-4)
    # group 1: rewards 2, 2, 2 -> all equal -> 0
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0, 2.0])
    group = torch.tensor([0, 0, 1, 1, 1])
    adv = group_advantages(rewards, group)
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(adv, torch.tensor([expected, -expected, 0, 0, 0]), atol=1e-7)


def test_group_advantages_without_std_and_with_unscorable():
    rewards = torch.tensor([3.0, 1.0, float("nan"), 5.0])
    group = torch.tensor([0, 0, 0, 1])
    adv = group_advantages(rewards, group, scale=False)
    # NaN is excluded from its group's mean (2.0) and gets advantage 0; a lone output gets 0.
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_group_advantages_match_trl_formula():
    torch.manual_seed(0)
    rewards = torch.rand(12)
    group = torch.arange(3).repeat_interleave(4)
    # TRL (grpo_trainer.py): mean/std over view(-1, G), (r - mean) / (std + 1e-4)
    grouped = rewards.view(-1, 4)
    trl = (rewards - grouped.mean(1).repeat_interleave(4)) / (grouped.std(1).repeat_interleave(4) + 1e-4)
    assert torch.allclose(group_advantages(rewards, group), trl, atol=1e-6)
