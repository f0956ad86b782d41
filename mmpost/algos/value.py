"""Critic term: value regression with PPO's value clipping (for GAE advantages)."""

from __future__ import annotations

import torch


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, transitions: torch.Tensor | None = None) -> torch.Tensor:
    """``0.5 * max((V - R)^2, (V_clip - R)^2)`` averaged over real transitions, with
    ``V_clip = V_old + clip(V - V_old, -clip, clip)``; ``clip <= 0`` turns clipping off.
    ``transitions``: the normaliser when it is not ``mask.sum()`` (a data-parallel step's mean count over
    processes, :func:`mmpost.distributed.token_count`)."""
    error = (values - returns) ** 2
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        error = torch.max(error, (clipped - returns) ** 2)
    mask = mask.to(values.dtype)
    return 0.5 * (error * mask).sum() / (mask.sum() if transitions is None else transitions).clamp(min=1.0)
