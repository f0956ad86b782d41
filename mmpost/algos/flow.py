"""Flow-matching sampling as a chain of Gaussian transitions (pi_RL), so a sampled action chunk
has a tractable log-probability.

Convention (openpi): t=1 is noise, t=0 the action; K steps on ``t_k = 1, 1-1/K, ..., 1/K, 0``,
``delta = t_k - t_{k+1}``. From a velocity ``v`` at ``x_t``: ``x0 = x_t - v t`` and
``x1 = x_t + v (1 - t)``; every branch's mean is ``x0 * w0 + x1 * w1``:

* ``ode``: ``w0 = 1 - (t - delta)``, ``w1 = t - delta`` (plain Euler), std 0.
* ``sde`` (Flow-SDE, ODE->SDE conversion after Flow-GRPO): ``sigma_t = a sqrt(t / (1 - t))``
  (``t = 1`` uses ``t_1`` in the denominator), ``w1 = t - delta - sigma_t^2 delta / (2 t)``,
  std ``sqrt(delta) sigma_t``.
* ``noise`` (Flow-Noise, after ReinFlow): Euler mean, std from a learned noise head.

Source: RLinf ``rlinf/models/embodiment/openpi/openpi_action_model.py`` (``sample_mean_var_val``,
``get_logprob_norm``); arXiv 2510.25889.
"""

from __future__ import annotations

import math

import torch

from mmpost.distributed import whole_batch_draw


def timesteps(num_steps: int) -> torch.Tensor:
    """[K + 1] integration grid from 1 (noise) to 0 (action)."""
    return torch.cat([torch.linspace(1, 1 / num_steps, num_steps), torch.zeros(1)])


def sde_sigmas(num_steps: int, noise_level: float) -> torch.Tensor:
    """[K] Flow-SDE noise scale ``sigma_t = a * sqrt(t / (1 - t))`` at each step's start time."""
    t = timesteps(num_steps)
    return (noise_level * torch.sqrt(t / (1 - torch.where(t == 1, t[1], t))))[:-1]


def transition(x: torch.Tensor, velocity: torch.Tensor, t, delta, branch: str, sigma=None,
               noise_std=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of ``x_{t - delta}`` given ``x_t`` and the predicted velocity, for one branch.

    ``t``, ``delta``, ``sigma`` are floats or tensors broadcastable to ``x``; ``noise_std`` (same
    shape as ``x``) is the learned std of the ``noise`` branch.
    """
    x0, x1 = x - velocity * t, x + velocity * (1 - t)
    w0 = 1 - (t - delta)
    if branch == "ode":
        return x0 * w0 + x1 * (t - delta), torch.zeros_like(x)
    if branch == "sde":
        mean = x0 * w0 + x1 * (t - delta - sigma**2 * delta / (2 * t))
        return mean, torch.ones_like(x) * (math.sqrt(delta) if isinstance(delta, float) else delta.sqrt()) * sigma
    if branch == "noise":
        return x0 * w0 + x1 * (t - delta), noise_std
    raise ValueError(f"unknown transition branch {branch!r}")


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log N(x; mean, std^2)``; deterministic (std 0) elements give 0."""
    deterministic = std == 0
    safe = torch.where(deterministic, torch.ones_like(std), std)
    logp = -torch.log(safe) - 0.5 * math.log(2 * math.pi) - 0.5 * ((x - mean) / safe) ** 2
    return torch.where(deterministic, torch.zeros_like(logp), logp)


def flow_matching_loss(velocity_fn, actions: torch.Tensor, generator=None) -> torch.Tensor:
    """Conditional flow-matching regression on demonstration chunks ``actions`` [B, H, A]:
    ``x_t = t * eps + (1 - t) * a``, target velocity ``eps - a``, ``t ~ U(0, 1)``. In a data-parallel
    step ``eps`` and ``t`` are this process's share of the whole batch's draws (:func:`whole_batch_draw`)."""
    B, dtype = actions.shape[0], actions.dtype
    noise = whole_batch_draw(lambda shape: torch.randn(shape, generator=generator, dtype=dtype), B, *actions.shape[1:])
    t = whole_batch_draw(lambda shape: torch.rand(shape, generator=generator, dtype=dtype), B)
    noise, t = noise.to(actions.device), t.to(actions.device)
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    return ((velocity_fn(x_t, t) - (noise - actions)) ** 2).mean()
