"""Denoising steps as Gaussian transitions, so a sampled image trajectory has per-step log-probs
(DDPO / Flow-GRPO), and the closed-form KL between two such transitions.

* DDIM with eta > 0 (DDPO, ``ddpo_pytorch/diffusers_patch/ddim_with_logprob.py``): from the
  predicted noise ``eps`` at ``x_t``: ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``,
  ``sigma^2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)``, ``std = eta * sigma``,
  ``mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps`` (``a`` = alphas_cumprod).
* Flow-matching SDE (Flow-GRPO, ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``): with
  ``x_s = (1 - s) x0 + s noise``, velocity ``v``, step ``dt = s' - s < 0``, noise level ``a``:
  ``std_s = a sqrt(s / (1 - s))`` (``s = 1`` uses the next grid value),
  ``mean = x (1 + std^2 dt / (2 s)) + v (1 + std^2 (1 - s) / (2 s)) dt``, transition std
  ``std_s sqrt(-dt)``.

Log-probs are the *mean* over an image's elements, as both reference implementations do (a sum
would scale the ratio's sensitivity with resolution); see :func:`mean_logprob`.
"""

from __future__ import annotations

import math

import torch


def ddim_transition(eps: torch.Tensor, x_t: torch.Tensor, alpha_t, alpha_prev, eta: float = 1.0):
    """(mean, std) of ``x_prev`` given ``x_t`` for DDIM with ``eta`` (alphas are cumulative products)."""
    alpha_t, alpha_prev = torch.as_tensor(alpha_t, dtype=x_t.dtype), torch.as_tensor(alpha_prev, dtype=x_t.dtype)
    x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std.expand_as(mean) if std.dim() else std


def flow_sde_transition(velocity: torch.Tensor, x: torch.Tensor, sigma, sigma_next, noise_level: float = 0.7,
                        sigma_one=None):
    """(mean, std) of the next latent for Flow-GRPO's SDE step from ``sigma`` to ``sigma_next``
    (floats, or tensors broadcasting against ``x`` for per-sample steps); ``sigma_one`` replaces
    ``sigma = 1`` in ``sqrt(s / (1 - s))`` (Flow-GRPO uses the grid's second value)."""
    sigma, sigma_next = torch.as_tensor(sigma, dtype=x.dtype), torch.as_tensor(sigma_next, dtype=x.dtype)
    s = torch.where(sigma == 1, torch.as_tensor(sigma_one, dtype=x.dtype), sigma) if sigma_one is not None else sigma
    std_s = noise_level * (s / (1 - s)).sqrt()
    dt = sigma_next - sigma
    mean = x * (1 + std_s**2 / (2 * sigma) * dt) + velocity * (1 + std_s**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, (std_s * (-dt).sqrt()).expand_as(x)


def mean_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B] Gaussian log-density of each sample, averaged over its elements (DDPO, Flow-GRPO)."""
    logp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).mean(1)


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B] closed-form KL between two Gaussians with the same std, averaged over elements:
    ``(mean - ref_mean)^2 / (2 std^2)`` (Flow-GRPO's KL to the reference)."""
    return ((mean - ref_mean) ** 2 / (2 * std**2)).flatten(1).mean(1)
