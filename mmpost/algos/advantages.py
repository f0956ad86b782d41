"""Advantage estimators: functions of rewards, never of the policy."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_g) / (std_g + eps)`` within each group ``g``.

    Args:
        rewards: [N] rewards; NaN marks an unscorable output (excluded from its group's mean and
            std, and given advantage 0), as TRL does for rewards that are all ``None``.
        group: [N] group id of each output.
        scale: divide by the group's std (GRPO); ``False`` gives Dr.GRPO's mean-centring only.
        eps: added to the std, as in TRL (1e-4), so all-equal groups give 0, not NaN.

    Returns:
        [N] advantages. The std is the unbiased (Bessel-corrected) one, matching TRL.
    """
    advantages = torch.zeros_like(rewards)
    for g in torch.unique(group):
        members = (group == g) & ~torch.isnan(rewards)
        values = rewards[members]
        if values.numel() == 0:
            continue
        centred = values - values.mean()
        if scale:
            std = values.std() if values.numel() > 1 else values.new_zeros(())
            centred = centred / (std + eps)
        advantages[members] = centred
    return advantages


def rloo_advantages(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RLOO: ``r_i - mean_{j != i} r_j`` within each group (no std scaling).

    NaN rewards are excluded from their siblings' baselines and get advantage 0, as in TRL's
    ``RLOOTrainer``; an output with no scorable sibling has no baseline and gets 0.
    """
    advantages = torch.zeros_like(rewards)
    for g in torch.unique(group):
        members = (group == g) & ~torch.isnan(rewards)
        values = rewards[members]
        if values.numel() < 2:
            continue
        advantages[members] = values - (values.sum() - values) / (values.numel() - 1)
    return advantages


def reinforce_pp_advantages(rewards: torch.Tensor, group: torch.Tensor, mask: torch.Tensor,
                            subtract_group_mean: bool = False) -> torch.Tensor:
    """REINFORCE++: the outcome reward on every step of its output, whitened over all real steps of
    the *batch* (not per group); ``subtract_group_mean`` first centres each reward on its group's mean
    (verl's ``reinforce_plus_plus_baseline``). Returns [N, T]; NaN rewards give 0.

    With gamma = 1 and the KL kept out of the reward, verl's per-step return is the outcome reward
    itself, so the per-step advantage before whitening is that reward (``core_algos.py``).
    """
    scores = torch.nan_to_num(rewards, nan=0.0)
    if subtract_group_mean:
        scores = group_advantages(rewards, group, scale=False)
    valid = mask * (~torch.isnan(rewards)).to(mask.dtype)[:, None]
    return masked_whiten(scores[:, None].expand_as(mask), valid)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's ``masked_whiten``: ``(x - mean) * rsqrt(var + 1e-8)`` over the real entries, with the
    unbiased (Bessel-corrected) variance; 0 on padding."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1.0)
    var = (((values - mean) * mask) ** 2).sum() / count.clamp(min=1.0) * count / (count - 1).clamp(min=1.0)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def overlong_penalty(lengths: torch.Tensor, max_length: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward: 0 up to ``max_length - cache`` tokens,
    then a linear ramp to -1 at ``max_length``, -1 beyond (``((L - cache) - |y|) / cache``)."""
    start = max_length - cache
    ramp = (start - lengths.float()) / max(cache, 1)
    return torch.where(lengths <= start, torch.zeros_like(ramp), torch.clamp(ramp, min=-1.0))


def uniform_group_mask(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[N] bool: outputs whose group's rewards are not all equal (DAPO's dynamic sampling keeps
    only these; an all-equal group has zero advantages and only dilutes the token normaliser)."""
    keep = torch.zeros_like(group, dtype=torch.bool)
    for g in torch.unique(group):
        members = group == g
        values = rewards[members]
        values = values[~torch.isnan(values)]
        keep[members] = bool(values.numel() > 1 and float(values.max() - values.min()) > 0)
    return keep


def group_keep_mask(rewards: torch.Tensor, group: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[N] bool: outputs whose group's mean reward lies in ``[low, high]``.

    pi_RL's GRPO keeps groups whose success rate is in [0.1, 0.9]: a group that all succeeded or
    all failed has zero advantages and would only dilute the loss's normaliser."""
    keep = torch.zeros_like(group, dtype=torch.bool)
    for g in torch.unique(group):
        members = group == g
        mean = torch.nanmean(rewards[members])
        keep[members] = bool(low <= mean <= high)
    return keep


def gae(rewards: torch.Tensor, values: torch.Tensor, alive: torch.Tensor, bootstrap: torch.Tensor,
        gamma: float = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over per-transition rewards of whole episodes.

    Args:
        rewards: [N, C] reward of each transition (for a VLA, one executed action chunk).
        values: [N, C] critic value of the state each transition started from.
        alive: [N, C] 1 for real transitions; an episode's real transitions come first.
        bootstrap: [N] value after an episode's last transition: 0 when it terminated, the
            critic's value of the final state when it was truncated (time limit).
        gamma, lam: discount and GAE's lambda (pi_RL: 0.99, 0.95).

    Returns:
        (advantages, returns), both [N, C] and 0 on padding; ``returns = advantages + values``.
        ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``.
    """
    alive = alive.to(rewards.dtype)
    n, c = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(c)):
        last = alive[:, t] * (1 - (alive[:, t + 1] if t + 1 < c else torch.zeros_like(running)))
        next_value = last * bootstrap + (1 - last) * (values[:, t + 1] if t + 1 < c else torch.zeros_like(running))
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running * (1 - last)) * alive[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * alive


def normalize(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, total=lambda s: s) -> torch.Tensor:
    """Batch mean/std normalisation over the real entries of ``mask`` (PPO's advantage whitening).
    ``total``: turns this batch's sums into the whole batch's (a data-parallel step's sum over processes,
    :func:`mmpost.distributed.process_sum`)."""
    mask = mask.to(advantages.dtype)
    count = total(mask.sum()).clamp(min=1.0)
    mean = total((advantages * mask).sum()) / count
    var = total((((advantages - mean) * mask) ** 2).sum()) / count
    return (advantages - mean) / (var.sqrt() + eps) * mask
