"""KL-to-reference estimators on sampled action steps (Schulman, "Approximating KL divergence").

With ``delta = log p_ref - log p`` on a step sampled from the policy:
``k1 = -delta`` (unbiased, can be negative), ``k2 = delta^2 / 2`` (low variance, biased),
``k3 = exp(delta) - delta - 1`` (unbiased and non-negative; TRL's GRPO, verl's ``low_var_kl``).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-step ``k3 = exp(ref - logp) - (ref - logp) - 1``."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def per_step_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """[N, T] per-step KL(policy || ref) estimate by name (``k1`` / ``k2`` / ``k3``)."""
    functions = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    if estimator not in functions:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")
    return functions[estimator](logprobs, ref_logprobs)


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] sampled KL per output: the mean of ``k1 = logp - ref`` over its masked steps (Carve3D's
    ``mean_t[log p_theta - log p_ref]`` on the sampled trajectory; 0 for an output with no step)."""
    mask = mask.to(logprobs.dtype)
    return ((logprobs - ref_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def full_forward_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """[..., ] ``KL(ref || policy) = sum_v p_ref (log p_ref - log p)`` over the vocabulary at each
    position (Anchored SFT's ``F.kl_div(log_softmax(theta), softmax(ref))``, per position)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    log_ref = torch.log_softmax(ref_logits.float(), dim=-1)
    terms = log_ref.exp() * (log_ref - log_p)
    # tokens the reference never emits (suppressed: -inf logits) contribute 0, not 0 * (-inf + inf)
    return torch.where(torch.isneginf(log_ref), torch.zeros_like(terms), terms).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """[...] entropy of ``softmax(logits)`` over the last axis; tokens with -inf logits (suppressed)
    contribute 0, not 0 * -inf."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * torch.nan_to_num(log_p, neginf=0.0)).sum(-1)
