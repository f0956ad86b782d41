"""Advantage estimators (group, RLOO, REINFORCE++, GAE), normalisation and the group filters, by hand."""

import math

import torch

from mmpost.algos.advantages import gae, group_advantages, group_keep_mask, normalize


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


def test_rloo_by_hand():
    from mmpost.algos.advantages import rloo_advantages

    rewards = torch.tensor([1.0, 0.0, 2.0, 5.0, float("nan"), 3.0])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: 1 - (0+2)/2 = 0, 0 - 1.5 = -1.5, 2 - 0.5 = 1.5; group 1: NaN excluded -> 5 - 3, 3 - 5, NaN -> 0
    expected = torch.tensor([0.0, -1.5, 1.5, 2.0, 0.0, -2.0])
    assert torch.allclose(rloo_advantages(rewards, group), expected)
    # equals G/(G-1) times the mean-centred reward (the identity RLOO papers state)
    centred = rewards[:3] - rewards[:3].mean()
    assert torch.allclose(rloo_advantages(rewards[:3], group[:3]), 1.5 * centred)


def test_reinforce_pp_whitens_over_the_batch():
    from mmpost.algos.advantages import reinforce_pp_advantages

    rewards = torch.tensor([1.0, 0.0, 3.0])
    group = torch.tensor([0, 0, 1])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # real steps carry 1, 1, 0, 3: mean 1.25, unbiased var (0.0625*2 + 1.5625 + 3.0625) / 3 = 1.5833
    adv = reinforce_pp_advantages(rewards, group, mask)
    std = math.sqrt((2 * 0.0625 + 1.5625 + 3.0625) / 3 + 1e-8)
    assert torch.allclose(adv, torch.tensor([[-0.25 / std, -0.25 / std], [-1.25 / std, 0.0], [1.75 / std, 0.0]]),
                          atol=1e-6)
    # baseline variant: group means subtracted first (0.5 | 3): steps carry 0.5, 0.5, -0.5, 0
    adv = reinforce_pp_advantages(rewards, group, mask, subtract_group_mean=True)
    values = torch.tensor([0.5, 0.5, -0.5, 0.0])
    std = float(values.var(unbiased=True))
    expected = (values - values.mean()) / math.sqrt(std + 1e-8)
    assert torch.allclose(adv[mask.bool()], expected, atol=1e-6)


def test_overlong_penalty_by_hand():
    from mmpost.algos.advantages import overlong_penalty

    # max 20, cache 8: free up to 12, then (12 - L) / 8, at least -1
    lengths = torch.tensor([5, 12, 16, 20, 30])
    assert overlong_penalty(lengths, 20, 8).tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_dynamic_sampling_drops_all_equal_groups():
    from mmpost.algos.advantages import uniform_group_mask

    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, float("nan")])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert uniform_group_mask(rewards, group).tolist() == [False, False, True, True, False, False, False]


def test_gae_by_hand():
    # one episode of 3 transitions, terminated; gamma 0.9, lambda 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    alive = torch.ones(1, 3)
    adv, ret = gae(rewards, values, alive, torch.zeros(1), gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2, a1 = d2, d1 + 0.45 * d2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]), atol=1e-6)
    assert torch.allclose(ret, adv + values)


def test_gae_truncation_bootstrap_and_padding():
    # episode of 2 real transitions then padding; truncated with bootstrap value 0.4
    rewards = torch.tensor([[0.0, 0.0, 9.0]])
    values = torch.tensor([[0.2, 0.3, 9.0]])
    alive = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, alive, torch.tensor([0.4]), gamma=0.99, lam=0.95)
    d1 = 0.99 * 0.4 - 0.3
    d0 = 0.99 * 0.3 - 0.2
    assert torch.allclose(adv, torch.tensor([[d0 + 0.99 * 0.95 * d1, d1, 0.0]]), atol=1e-6)
    assert ret[0, 2] == 0


def test_normalize_ignores_padding():
    out = normalize(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(out, torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6)


def test_normalize_over_the_whole_batch_of_a_data_parallel_step():
    """``total`` turns this share's sums into the whole batch's: a process holding half of
    [1, 3 | 5, 7] whitens with the mean 4 and std sqrt(5) of all four, not its own half's."""
    share, other = torch.tensor([1.0, 3.0]), torch.tensor([5.0, 7.0])
    # the sum over two processes: this share's count, sum and squared deviations plus the other's
    others = iter([torch.tensor(2.0), other.sum(), ((other - 4.0) ** 2).sum()])
    out = normalize(share, torch.ones(2), total=lambda value: value + next(others))
    assert torch.allclose(out, (share - 4.0) / math.sqrt(5.0), atol=1e-6)


def test_group_keep_mask():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    assert group_keep_mask(rewards, group, 0.1, 0.9).tolist() == [False, False, True, True, False, False]
