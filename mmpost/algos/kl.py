"""KL-to-reference estimators on sampled action steps."""

from __future__ import annotations

import torch


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-step ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman's unbiased, non-negative
    estimator of KL(policy || ref) on samples from the policy; the one TRL's GRPO uses)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1
