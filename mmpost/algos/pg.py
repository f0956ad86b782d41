"""Clipped policy-gradient term (PPO / GRPO) with a choice of loss aggregation."""

from __future__ import annotations

import torch


def aggregate(per_step: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce a [N, T] per-step loss to a scalar.

    ``token_mean``: sum over every real step / number of real steps (DAPO; TRL's ``bnpo``, and
    ``dapo`` on one process). ``sequence_mean``: mean over outputs of each output's step mean
    (the original GRPO; TRL's ``grpo``).
    """
    if how == "token_mean":
        return (per_step * mask).sum() / mask.sum().clamp(min=1.0)
    if how == "sequence_mean":
        return ((per_step * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    raise ValueError(f"unknown aggregation {how!r}; expected 'token_mean' or 'sequence_mean'")


def clipped_pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                    aggregation: str = "token_mean", dual_clip: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``-min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)`` per action step, aggregated.

    With ``dual_clip = c > 1`` (Ye et al. 2020; pi_RL uses 3), steps with ``A < 0`` are further
    bounded by ``-c * A``, so a huge ratio on a bad action cannot dominate the batch.

    Args:
        logprobs: [N, T] current log-probs (with grad).
        old_logprobs: [N, T] log-probs of the sampling policy.
        advantages: [N] per output (broadcast over steps) or [N, T] per step.
        mask: [N, T] real action steps.
        clip_low, clip_high: PPO's clip range; ``clip_high > clip_low`` is DAPO's clip-higher.
        aggregation: see :func:`aggregate`.
        dual_clip: ``c`` of dual-clip PPO; 0 turns it off.

    Returns:
        The loss and metrics ``clip_frac`` (fraction of real steps whose ratio was clipped in the
        direction that matters) and ``ratio_mean``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_step = -torch.min(ratio * advantages, clipped * advantages)
    if dual_clip:
        per_step = torch.where(advantages < 0, torch.min(per_step, -dual_clip * advantages), per_step)
    with torch.no_grad():
        was_clipped = ((ratio < 1 - clip_low) & (advantages < 0)) | ((ratio > 1 + clip_high) & (advantages > 0))
        n = mask.sum().clamp(min=1.0)
        metrics = {"clip_frac": float((was_clipped.float() * mask).sum() / n),
                   "ratio_mean": float((ratio * mask).sum() / n)}
    return aggregate(per_step, mask, aggregation), metrics
