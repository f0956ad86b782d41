import math

import pytest
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


def test_chord_mu_schedule_by_hand():
    from mmpost.algos.schedules import chord_mu

    # warm-up 0 -> 0.9 over 10 steps, cosine 0.9 -> 0.1 over 20, then 0.1
    assert chord_mu(5, 0.9, 0.1, 10, 20) == pytest.approx(0.45)
    assert chord_mu(10, 0.9, 0.1, 10, 20) == pytest.approx(0.9)
    assert chord_mu(20, 0.9, 0.1, 10, 20) == pytest.approx(0.5)  # half-way: cos(pi/2) = 0
    assert chord_mu(40, 0.9, 0.1, 10, 20) == pytest.approx(0.1)
    assert chord_mu(3, 0.1, 0.1, 0, 0) == pytest.approx(0.1)  # CHORD-phi's constant mu


def test_entropy_temperature_controller_by_hand():
    from mmpost.algos.schedules import entropy_temperature

    assert entropy_temperature(1.0, 0.5, 0.3, 0.5) == pytest.approx(math.exp(-0.1))  # too random: cool down
    assert entropy_temperature(1.0, 0.1, 0.3, 0.5) == pytest.approx(math.exp(0.1))  # too sure: heat up
    assert entropy_temperature(1.0, 50.0, 0.3, 0.5) == pytest.approx(0.1)  # clamped


def test_rft_keeps_solved_top_k():
    from mmpost.stages.rft import kept_outputs

    rewards = torch.tensor([0.9, 1.0, 0.2, 1.0, float("nan"), 0.95])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    assert kept_outputs(rewards, group, 0.9, 0).tolist() == [True, True, False, True, False, True]
    assert kept_outputs(rewards, group, 0.9, 1).tolist() == [False, True, False, True, False, False]


def test_outcome_reward_on_the_last_token_with_kl_in_the_reward():
    """ReFT: the outcome reward lands on the last real token, -beta * (log p_old - log p_ref) on every token."""
    from types import SimpleNamespace

    from mmpost.stages.rl import outcome_as_step_rewards
    from mmpost.types import Rollout

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rollout = Rollout(logprobs=torch.tensor([[-1.0, -2.0, -1.0], [-0.5, 0.0, 0.0]]), mask=mask,
                      group=torch.tensor([0, 1]), outputs=["a", "b"], prompts=["p", "q"], columns={}, actions=None,
                      rewards=torch.tensor([1.0, 0.1]),
                      ref_logprobs=torch.tensor([[-1.5, -2.0, -0.5], [-0.5, 0.0, 0.0]]))
    policy = SimpleNamespace(values=lambda r: torch.full((2, 3), 0.5) * r.mask)
    outcome_as_step_rewards(rollout, policy, kl_coef=0.1)
    # row 0: KL terms -0.1 * (0.5, 0, -0.5) = (-0.05, 0, 0.05), reward 1 on step 3; row 1: 0.1 on step 1
    assert torch.allclose(rollout.step_rewards, torch.tensor([[-0.05, 0.0, 1.05], [0.1, 0.0, 0.0]]))
    assert torch.equal(rollout.alive, mask) and rollout.bootstrap.tolist() == [0.0, 0.0]
    assert torch.allclose(rollout.values, torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.0, 0.0]]))


def test_prefix_ratio_cosine_by_hand():
    from mmpost.algos.schedules import cosine

    assert cosine(0, 11, 0.95, 0.05) == pytest.approx(0.95)
    assert cosine(5, 11, 0.95, 0.05) == pytest.approx(0.5)  # half-way
    assert cosine(10, 11, 0.95, 0.05) == pytest.approx(0.05)


def test_sasr_switching_probability_by_hand():
    from mmpost.algos.schedules import sasr_sft_probability

    assert sasr_sft_probability(0.5, 2.0) == 0.25  # demonstrations fitted better than at the start: mostly GRPO
    assert sasr_sft_probability(3.0, 2.0) == 1.0  # drifted away from them: SFT
    assert sasr_sft_probability(float("nan"), 2.0) == 0.0  # no finite SFT gradient: never an SFT step
    assert sasr_sft_probability(1.0, 0.0) == 1.0
