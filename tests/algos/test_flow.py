"""pi_RL's Gaussian flow transitions and the flow-matching loss, against hand computations."""

import math

import torch

from mmpost.algos.flow import flow_matching_loss, gaussian_logprob, sde_sigmas, timesteps, transition


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
