"""Per-step Gaussian transitions of diffusion samplers against hand computation and diffusers."""

import math

import torch

from mmpost.algos.diffusion import ddim_transition, flow_sde_transition, gaussian_kl, mean_logprob


def test_ddim_transition_by_hand():
    eps, x = torch.tensor([[0.5]]), torch.tensor([[1.0]])
    a_t, a_prev = 0.5, 0.8
    x0 = (1.0 - math.sqrt(0.5) * 0.5) / math.sqrt(0.5)
    sigma = math.sqrt((1 - 0.8) / (1 - 0.5) * (1 - 0.5 / 0.8))
    mean, std = ddim_transition(eps, x, a_t, a_prev, eta=1.0)
    assert torch.allclose(std, torch.tensor([[sigma]]))
    assert torch.allclose(mean, torch.tensor([[math.sqrt(0.8) * x0 + math.sqrt(1 - 0.8 - sigma**2) * 0.5]]))


def test_ddim_transition_matches_diffusers_scheduler_step():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    scheduler.set_timesteps(10)
    torch.manual_seed(0)
    x, eps, z = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t in scheduler.timesteps[:-1]:
        prev = int(t) - 1000 // 10
        a_t, a_prev = scheduler.alphas_cumprod[int(t)], scheduler.alphas_cumprod[prev]
        mean, std = ddim_transition(eps, x, a_t, a_prev, eta=1.0)
        expected = scheduler.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        assert torch.allclose(mean + std * z, expected, atol=1e-5)


def test_flow_sde_transition_by_hand():
    v, x = torch.tensor([[0.4]]), torch.tensor([[1.0]])
    mean, std = flow_sde_transition(v, x, sigma=0.6, sigma_next=0.4, noise_level=0.7)
    s2 = 0.7**2 * 0.6 / 0.4
    dt = -0.2
    assert torch.allclose(mean, torch.tensor([[1.0 * (1 + s2 / 1.2 * dt) + 0.4 * (1 + s2 * 0.4 / 1.2) * dt]]))
    assert torch.allclose(std, torch.tensor([[math.sqrt(s2) * math.sqrt(0.2)]]))
    # sigma = 1 uses the next grid value in the noise scale
    _, std = flow_sde_transition(v, x, sigma=1.0, sigma_next=0.75, noise_level=0.7, sigma_one=0.75)
    assert torch.allclose(std, torch.tensor([[0.7 * math.sqrt(3.0) * 0.5]]))


def test_flow_sde_without_noise_is_the_euler_step():
    v, x = torch.randn(2, 4), torch.randn(2, 4)
    mean, _ = flow_sde_transition(v, x, sigma=0.5, sigma_next=0.25, noise_level=0.0)
    assert torch.allclose(mean, x + v * (0.25 - 0.5))


def test_mean_logprob_and_kl_by_hand():
    x, mean, std = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 2.0]])
    per = [-(1.0**2) / 8 - math.log(2) - 0.5 * math.log(2 * math.pi), -math.log(2) - 0.5 * math.log(2 * math.pi)]
    assert torch.allclose(mean_logprob(x, mean, std), torch.tensor([sum(per) / 2]))
    assert torch.allclose(gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[0.5, 0.5]])),
                          torch.tensor([(1 / (2 * 0.25) + 0) / 2]))
