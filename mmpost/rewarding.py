"""Scoring a rollout with a weighted list of reward functions (TRL's reward contract)."""

from __future__ import annotations

import logging
import math
import traceback
from typing import Protocol, runtime_checkable

import torch

from mmpost.types import Rollout

log = logging.getLogger(__name__)


@runtime_checkable
class RunConfigured(Protocol):
    """A reward with settings of its own in the run's config (the sandbox pool's size, a CLIP
    checkpoint): the trainer hands it the config once, and the reward reads what it owns."""

    def configure(self, cfg) -> None:
        """Take this reward's settings from ``cfg`` (:class:`~mmpost.config.TrainConfig`)."""


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable (``reward_errors="raise"``)."""


ERROR_MODES = ("contain", "raise")
error_mode = "contain"  # set from TrainConfig.reward_errors by the trainer


def set_error_mode(mode: str) -> None:
    """``"contain"``: a reward that raises, returns the wrong number of values, or returns a
    non-finite or non-numeric value has those samples marked invalid (no reward from it), logged
    and counted in ``reward/NAME/errors`` / ``reward/NAME/invalid``; the run goes on.
    ``"raise"``: the same stops the run with a :class:`RewardError` naming the reward."""
    global error_mode
    if mode not in ERROR_MODES:
        raise ValueError(f"reward_errors must be one of {ERROR_MODES}, got {mode!r}")
    error_mode = mode


def _as_float(value) -> float:
    """A reward value as a finite float; NaN for None (not applicable) and for anything invalid."""
    if value is None or isinstance(value, (str, bytes)):
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _invalid(value) -> bool:
    """A value that is neither None (not applicable) nor a finite number."""
    return value is not None and math.isnan(_as_float(value))


def _call(name: str, fn, rollout: Rollout) -> tuple[list, int]:
    """``fn``'s values for the rollout, or (all None, n) when it failed and errors are contained."""
    n = len(rollout)
    try:
        values = fn(prompts=rollout.prompts, completions=rollout.outputs, **rollout.columns)
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            raise TypeError(f"returned {type(values).__name__}, expected a list of {n} numbers")
        if len(values) != n:
            raise ValueError(f"returned {len(values)} values for {n} completions")
        return values, 0
    except Exception as error:  # noqa: BLE001 - a broken reward must not kill the run (unless asked)
        where = _where(error, fn)
        if error_mode == "raise":
            raise RewardError(f"reward {name!r} failed{where}: {type(error).__name__}: {error} "
                              "(MMPOST_DEBUG=1 shows the traceback)") from error
        log.warning("reward %r failed%s: %s: %s", name, where, type(error).__name__, error)
        return [None] * n, n


def _where(error: BaseException, fn) -> str:
    """`` at FILE:LINE in FUNCTION``: the deepest line of the reward's own file in the traceback (else the
    deepest line of all), so that a user's failing reward points at their code."""
    frames = traceback.extract_tb(error.__traceback__)[1:]  # [0] is _call itself
    own = getattr(getattr(fn, "__code__", None), "co_filename", None)
    frame = next((f for f in reversed(frames) if f.filename == own), frames[-1] if frames else None)
    return f" at {frame.filename}:{frame.lineno} in {frame.name}" if frame else ""


def score_rollout(rollout: Rollout, rewards: dict[str, callable], weights: dict[str, float]) -> dict[str, float]:
    """Call each reward function on the rollout; set ``rollout.rewards`` and ``reward_components``.

    A function is called TRL's way: ``fn(prompts=..., completions=..., **columns)``. ``None``
    (not applicable) and invalid values are excluded from means; the weighted total of an
    output is NaN only when every function returned ``None`` for it (then its advantage is 0).
    Failures follow :func:`set_error_mode`: contained by default (a function that raises or
    returns the wrong count has its values count as ``None``, logged and counted in
    ``reward/NAME/errors``; NaN, inf or non-numbers count in ``reward/NAME/invalid``).

    Returns:
        Metrics: ``reward/NAME/mean`` per function and component, ``reward/total/mean``.
    """
    n = len(rollout)
    total = torch.zeros(n)
    valid = torch.zeros(n, dtype=torch.bool)
    metrics: dict[str, float] = {}
    for name, fn in rewards.items():
        values, errors = _call(name, fn, rollout)
        invalid = [i for i, v in enumerate(values) if _invalid(v)]
        if invalid:
            if error_mode == "raise":
                raise RewardError(f"reward {name!r} returned {values[invalid[0]]!r} for completion {invalid[0]} "
                                  f"({len(invalid)} of {n} values are not finite numbers)")
            log.warning("reward %r: %d of %d values are not finite numbers (first: %r); those samples get no "
                        "reward from it", name, len(invalid), n, values[invalid[0]])
            metrics[f"reward/{name}/invalid"] = float(len(invalid))
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
