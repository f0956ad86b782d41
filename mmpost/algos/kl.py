"""KL-to-reference estimators on sampled action steps."""

from __future__ import annotations

import torch


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-step ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman's unbiased, non-negative
    estimator of KL(policy || ref) on samples from the policy; the one TRL's GRPO uses)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] sampled KL per output: the mean of ``k1 = logp - ref`` over its masked steps (Carve3D's
    ``mean_t[log p_theta - log p_ref]`` on the sampled trajectory; 0 for an output with no step)."""
    mask = mask.to(logprobs.dtype)
    return ((logprobs - ref_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
