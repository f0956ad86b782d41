"""What a stage's step function gets: the policy, its reference, the rows, rewards and one optimiser."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mmpost.config import Stage


@dataclass
class StageContext:
    """Everything one step of a stage needs; the trainer loop owns it and checkpoints ``state``."""

    stage: Stage
    policy: Any
    reference: Any  # frozen copy of the policy at the start of the stage (None when no term needs it)
    rows: list  # the stage's data rows; steps receive indices into them
    rewards: dict  # name -> reward function
    weights: dict  # name -> weight
    accelerator: Any
    optimizer: Any
    scheduler: Any
    params: list
    state: dict = field(default_factory=dict)  # per-stage state that must survive a resume (JSON-able)
    step: int = 0  # 0-based index of the current step within the stage
    steps: int = 1  # steps in the stage (for schedules over the stage)
    demo_rows: list | None = None  # rows of ``stage.demo_data`` when the demonstrations live apart

    def batch(self, indices: list[int]) -> list[dict]:
        return [self.rows[i] for i in indices]

    def demo_batch(self, indices: list[int]) -> list[dict]:
        """Demonstrations for a step: the rows themselves, or as many rows drawn from ``demo_rows``
        (with the checkpointed torch RNG, so a resumed run draws the same ones)."""
        if self.demo_rows is None:
            return self.batch(indices)
        return [self.demo_rows[i] for i in torch.randint(len(self.demo_rows), (len(indices),)).tolist()]

    def update(self, loss: torch.Tensor | None, advance_schedule: bool = True) -> float:
        """One optimiser step on ``loss``; returns the gradient norm before clipping. ``None`` (nothing to
        learn from this batch) or a non-finite loss or gradient skips the step (NaN is logged) rather
        than poisoning the weights; the learning-rate schedule advances either way, unless the update
        is an extra one the schedule did not plan for (``advance_schedule=False``)."""
        grad_norm = math.nan
        if loss is not None and torch.isfinite(loss):
            self.accelerator.backward(loss)
            grad_norm = float(self.accelerator.clip_grad_norm_(self.params, self.stage.max_grad_norm))
        if math.isfinite(grad_norm):
            self.optimizer.step()
        if advance_schedule:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm
