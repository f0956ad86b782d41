"""pi_RL's Gaussian flow transitions, the flow-matching loss and the critic-side terms, against
hand computations."""

import math

import torch

from mmpost.algos.advantages import gae, group_keep_mask, normalize
from mmpost.algos.flow import flow_matching_loss, gaussian_logprob, sde_sigmas, timesteps, transition
from mmpost.algos.pg import clipped_pg_loss
from mmpost.algos.value import value_loss


def test_grid_and_sde_sigmas_by_hand():
    assert torch.allclose(timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    # a * sqrt(t / (1 - t)), with t=1 using t_1 = 0.75 in the denominator: 0.5*[2, sqrt(3), 1, sqrt(1/3)]
    expected = 0.5 * torch.tensor([2.0, math.sqrt(3), 1.0, math.sqrt(1 / 3)])
    assert torch.allclose(sde_sigmas(4, 0.5), expected, atol=1e-6)


def test_three_branches_by_hand():
    x, v, t, delta = torch.tensor([1.0]), torch.tensor([0.5]), 0.75, 0.25
    # ODE: Euler step x - v * delta
    mean, std = transition(x, v, t, delta, "ode")
    assert torch.allclose(mean, torch.tensor([0.875])) and std.item() == 0
    # SDE: x0 = 0.625, x1 = 1.125, w0 = 0.5, w1 = 0.5 - sigma^2 * 0.25 / 1.5 with sigma^2 = 0.75 -> 0.375
    sigma = 0.5 * math.sqrt(0.75 / 0.25)
    mean, std = transition(x, v, t, delta, "sde", sigma=sigma)
    assert torch.allclose(mean, torch.tensor([0.625 * 0.5 + 1.125 * 0.375]))
    assert torch.allclose(std, torch.tensor([math.sqrt(0.25) * sigma]))
    # Flow-Noise: Euler mean, the given std
    mean, std = transition(x, v, t, delta, "noise", noise_std=torch.tensor([0.1]))
    assert torch.allclose(mean, torch.tensor([0.875])) and torch.allclose(std, torch.tensor([0.1]))


def test_gaussian_logprob_by_hand_and_zero_for_deterministic_steps():
    value = gaussian_logprob(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 3.0]), torch.tensor([2.0, 0.0]))
    expected = -math.log(2.0) - 0.5 * math.log(2 * math.pi) - 0.5 * 0.25**2
    assert abs(value[0].item() - expected) < 1e-6 and value[1].item() == 0.0


def test_flow_matching_loss_formula():
    actions = torch.tensor([[[0.5, -1.0]]])
    g = torch.Generator().manual_seed(3)
    loss = flow_matching_loss(lambda x, t: torch.zeros_like(x), actions, generator=g)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(actions.shape, generator=g)
    assert torch.allclose(loss, ((noise - actions) ** 2).mean())  # zero velocity: error is the target itself


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


def test_value_loss_with_clipping_by_hand():
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.1])
    # first: unclipped (1-2)^2 = 1; clipped 0.5+0.2 = 0.7 -> (0.7-2)^2 = 1.69 -> max 1.69; second: 0.01
    loss = value_loss(values, old, returns, torch.ones(2), clip=0.2)
    assert torch.allclose(loss, torch.tensor(0.5 * (1.69 + 0.01) / 2))


def test_dual_clip_bounds_negative_advantages():
    logp = torch.log(torch.tensor([[5.0, 5.0]]))  # ratio 5 against old log-prob 0
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)
    adv = torch.tensor([[-1.0, 1.0]])
    plain, _ = clipped_pg_loss(logp, old, adv, mask, aggregation="token_mean")
    dual, _ = clipped_pg_loss(logp, old, adv, mask, aggregation="token_mean", dual_clip=3.0)
    # A<0: -min(5*-1, 1.2*-1) = 5 -> dual-clip caps at 3; A>0: -min(5, 1.2) = -1.2
    assert torch.allclose(plain, torch.tensor((5.0 - 1.2) / 2))
    assert torch.allclose(dual, torch.tensor((3.0 - 1.2) / 2))


def test_group_keep_mask():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    assert group_keep_mask(rewards, group, 0.1, 0.9).tolist() == [False, False, True, True, False, False]
