"""Clipped policy-gradient term (PPO / GRPO / GSPO / RLOO) with a choice of loss aggregation.

The TRL loss types differ only in :func:`aggregate` (TRL ``grpo_trainer.py::_compute_loss``):
``grpo`` = ``sequence_mean``, ``bnpo`` and ``dapo`` (one process) = ``token_mean``, ``dr_grpo`` =
``max_length``. GSPO and TRL's RLOO differ only in the importance ratio (``ratio_level``).
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "sequence_mean", "max_length")
RATIO_LEVELS = ("token", "sequence", "sequence_sum")


def aggregate(per_step: torch.Tensor, mask: torch.Tensor, how: str, max_length: int = 0,
              tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a [N, T] per-step loss to a scalar.

    ``token_mean``: sum over every real step / number of real steps (DAPO; TRL's ``bnpo``, and
    ``dapo`` on one process). ``sequence_mean``: mean over outputs of each output's step mean
    (the original GRPO; TRL's ``grpo``). ``max_length``: sum / (N * max_length), a constant
    normaliser, so no output's length changes its steps' weight (Dr. GRPO; TRL's ``dr_grpo``).

    ``tokens``: the token-mean normaliser when it is not ``mask.sum()``, e.g. the mean count over
    data-parallel processes (:func:`mmpost.distributed.token_count`, as transformers'
    ``num_items_in_batch``); this module never talks to other processes itself.
    """
    if how == "token_mean":
        return (per_step * mask).sum() / (mask.sum() if tokens is None else tokens).clamp(min=1.0)
    if how == "sequence_mean":
        return ((per_step * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if how == "max_length":
        return (per_step * mask).sum() / (per_step.shape[0] * (max_length or per_step.shape[1]))
    raise ValueError(f"unknown aggregation {how!r}; expected one of {', '.join(AGGREGATIONS)}")


def log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """[N, T] log importance ratio per step.

    ``token``: ``log p - log p_old`` per step (PPO, GRPO). ``sequence``: GSPO's length-normalised
    sequence ratio ``mean_t(log p - log p_old)`` on every step of the output, with the gradient
    of each step's own token (GSPO-token: ``sg(s_i) * p_t / sg(p_t)``, the same value). ``sequence_sum``:
    the summed sequence log-ratio (TRL's RLOOTrainer), one ratio per output.
    """
    delta = (logprobs - old_logprobs) * mask
    if level == "token":
        return delta
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; expected one of {', '.join(RATIO_LEVELS)}")
    total = delta.sum(-1, keepdim=True)
    if level == "sequence":
        sequence = total / mask.sum(-1, keepdim=True).clamp(min=1.0)
        return sequence.detach() + logprobs - logprobs.detach()
    return total.expand_as(delta)


def clipped_pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                    aggregation: str = "token_mean", dual_clip: float = 0.0, ratio_level: str = "token",
                    max_length: int = 0, tokens: torch.Tensor | None = None, off_policy: torch.Tensor | None = None,
                    shaping_gamma: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``-min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)`` per action step, aggregated.

    With ``dual_clip = c > 1`` (Ye et al. 2020; pi_RL uses 3), steps with ``A < 0`` are further
    bounded by ``-c * A``, so a huge ratio on a bad action cannot dominate the batch.

    With ``shaping_gamma = g > 0``, the steps of ``off_policy`` outputs (demonstrations in a group) are
    LUFFY's policy shaping instead: ``-A * p / (p + g)`` with ``p`` the current probability, unclipped
    (``ElliottYan/LUFFY`` ``mix_core_alg.py::compute_token_on_off_policy_loss``, ``p_div_p_0.1``): its
    gradient ``-A g p / (p + g)^2 grad log p`` keeps low-probability demonstrated tokens learning.

    Args:
        logprobs: [N, T] current log-probs (with grad).
        old_logprobs: [N, T] log-probs of the sampling policy.
        advantages: [N] per output (broadcast over steps) or [N, T] per step.
        mask: [N, T] real action steps.
        clip_low, clip_high: PPO's clip range; ``clip_high > clip_low`` is DAPO's clip-higher.
        aggregation: see :func:`aggregate`; ``max_length`` is its constant for ``"max_length"``,
            ``tokens`` its normaliser for ``"token_mean"`` (default: ``mask.sum()``).
        dual_clip: ``c`` of dual-clip PPO; 0 turns it off.
        ratio_level: see :func:`log_ratio` (``sequence`` = GSPO, ``sequence_sum`` = TRL's RLOO).

    Returns:
        The loss and metrics ``clip_frac`` (fraction of real steps whose ratio was clipped in the
        direction that matters) and ``ratio_mean``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, mask, ratio_level))
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_step = -torch.min(ratio * advantages, clipped * advantages)
    if dual_clip:
        per_step = torch.where(advantages < 0, torch.min(per_step, -dual_clip * advantages), per_step)
    if shaping_gamma and off_policy is not None and bool(off_policy.any()):
        p = logprobs.exp()
        per_step = torch.where(off_policy.to(per_step.device)[:, None], -advantages * p / (p + shaping_gamma), per_step)
    with torch.no_grad():
        was_clipped = ((ratio < 1 - clip_low) & (advantages < 0)) | ((ratio > 1 + clip_high) & (advantages > 0))
        n = mask.sum().clamp(min=1.0)
        metrics = {"clip_frac": float((was_clipped.float() * mask).sum() / n),
                   "ratio_mean": float((ratio * mask).sum() / n)}
    if ratio_level == "sequence_sum":  # one term per output (TRL RLOO: mean over sequences)
        # An output with no real step (masked out, e.g. truncated) adds nothing: not its -A to the value
        # (TRL's logged loss counts it; its gradient is 0 either way).
        kept = (mask.sum(-1) > 0).to(per_step.dtype)
        return (per_step[:, 0] * kept).sum() / per_step.shape[0], metrics
    return aggregate(per_step, mask, aggregation, max_length, tokens), metrics
