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
