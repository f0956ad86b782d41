"""Scoring a rollout with a weighted list of reward functions (TRL's reward contract)."""

from __future__ import annotations

import logging
import math

import torch

from mmpost.types import Rollout

log = logging.getLogger(__name__)


def _as_float(value) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def score_rollout(rollout: Rollout, rewards: dict[str, callable], weights: dict[str, float]) -> dict[str, float]:
    """Call each reward function on the rollout; set ``rollout.rewards`` and ``reward_components``.

    A function is called TRL's way: ``fn(prompts=..., completions=..., **columns)``. ``None``
    (not applicable) and non-finite values are excluded from means; the weighted total of an
    output is NaN only when every function returned ``None`` for it (then its advantage is 0).
    A function that raises is contained: its values count as ``None`` and the error is logged
    and counted in ``reward/NAME/errors``.

    Returns:
        Metrics: ``reward/NAME/mean`` per function and component, ``reward/total/mean``.
    """
    n = len(rollout)
    total = torch.zeros(n)
    valid = torch.zeros(n, dtype=torch.bool)
    metrics: dict[str, float] = {}
    for name, fn in rewards.items():
        try:
            values = fn(prompts=rollout.prompts, completions=rollout.outputs, **rollout.columns)
            if len(values) != n:
                raise ValueError(f"returned {len(values)} values for {n} completions")
            errors = 0
        except Exception as error:  # noqa: BLE001 - a broken reward must not kill the run
            log.warning("reward %r failed: %s: %s", name, type(error).__name__, error)
            values, errors = [None] * n, n
        parts = {name: values, **{f"{name}/{k}": v for k, v in getattr(values, "components", {}).items()}}
        for key, part in parts.items():
            tensor = torch.tensor([_as_float(v) for v in part])
            rollout.reward_components[key] = [None if math.isnan(v) else v for v in tensor.tolist()]
            if not torch.isnan(tensor).all():
                metrics[f"reward/{key}/mean"] = float(torch.nanmean(tensor))
        if errors:
            metrics[f"reward/{name}/errors"] = float(errors)
        tensor = torch.tensor([_as_float(v) for v in values])
        total += weights.get(name, 1.0) * torch.nan_to_num(tensor, nan=0.0)
        valid |= ~torch.isnan(tensor)
    total[~valid] = math.nan
    rollout.rewards = total
    if valid.any():
        metrics["reward/total/mean"] = float(torch.nanmean(total))
    return metrics
